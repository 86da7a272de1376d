#include "observe.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "faults.h"
#include "paths.h"
#include "straggler.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[from, n); the whole of v when it is shorter than that. */
static double median_after(const double *v, long n, long from) {
    if (n <= 0) return NAN;
    if (n <= from) from = 0;
    const long m = n - from;
    double *c = malloc((size_t)m * sizeof *c);
    if (!c) return NAN;
    memcpy(c, v + from, (size_t)m * sizeof *c);
    qsort(c, (size_t)m, sizeof *c, cmp_double);
    const double r = m % 2 ? c[m / 2] : 0.5 * (c[m / 2 - 1] + c[m / 2]);
    free(c);
    return r;
}

/* log.profile's records: the graph's nodes in backward's order, then the
 * step's means (rank 0; the metrics file). */
static void write_profile(trainer_t *t, double step_ms) {
    const graph_t *g = t->g;
    const long n = g->prof_passes ? g->prof_passes : 1, steps = t->prof_steps ? t->prof_steps : 1;
    profile_layer_t *l = calloc((size_t)g->nnodes, sizeof *l);
    if (!l) return;
    profile_record_t r = {.steps = t->prof_steps, .batch = t->cfg.batch_size, .ranks = t->ranks, .params = g->nweights,
                          .optimizer_ms = t->prof_opt_ms / (double)steps, .data_ms = t->prof_data_ms / (double)steps,
                          .step_ms = step_ms};
    const double per_step = (double)n / (double)steps; /* micro-batches per step */
    for (int i = 0; i < g->nnodes; i++) {
        const int k = g->order[g->nnodes - 1 - i];
        l[i] = (profile_layer_t){.node = k, .kind = layers_op_name(g->nodes[k].spec.kind),
                                 .forward_ms = g->prof_ms[k] / (double)n * per_step,
                                 .backward_ms = g->prof_ms[g->nnodes + k] / (double)n * per_step};
        graph_node_params(g, k, &l[i].lo, &l[i].hi);
        r.forward_ms += l[i].forward_ms;
        r.backward_ms += l[i].backward_ms;
    }
    metrics_profile(&t->m, l, g->nnodes, &r);
    free(l);
}

/* Straggler attribution for the steps since the last record: one all-gather
 * of every rank's probes (no collective in the other steps), judged on rank
 * 0 against a threshold of 15% of the median step's compute (the step less
 * its exposed communication; at least 0.5 ms): half the lateness of a rank
 * computing 1.3x slower. Against the whole step, a communication-bound step
 * (across emulated nodes: compute a third of it) hid such a rank in a third
 * of the records. A verdict is reported when the next record's window
 * repeats it (or the previous one named it at half the threshold), and
 * stays while the rank is late at half the threshold (straggler_confirm). */
static int attribute(trainer_t *t, long last, straggler_t *out) {
    const int K = t->probe_n, P = t->ranks;
    if (K == 0) return 0;
    const size_t stride = (size_t)t->probe_cap * PROBE_FIELDS + 1;
    t->probes[stride - 1] = ddp_hop_probe(t->ddp);
    if (ddp_allgather_double(t->ddp, t->probes, t->probes_all, stride)) return -1;
    if (t->rank == 0) {
        double *compute = t->hops + P; /* K entries, after the hops */
        for (int k = 0; k < K; k++) compute[k] = t->step_ms[last + 1 - K + k] - t->exposed_ms[last + 1 - K + k];
        const double thr = fmax(0.5, 0.15 * median_after(compute, K, 0));
        for (int r = 0; r < P; r++) t->hops[r] = t->probes_all[(size_t)r * stride + stride - 1];
        /* each rank's K probes sit at the start of its block: pack them */
        for (int r = 1; r < P; r++)
            memmove(t->probes_all + (size_t)r * K * PROBE_FIELDS, t->probes_all + (size_t)r * stride,
                    (size_t)K * PROBE_FIELDS * sizeof *t->probes_all);
        const straggler_t now = straggler_window_hops(t->probes_all, t->hops, P, K, thr, NULL);
        const straggler_t relaxed = straggler_window_hops(t->probes_all, t->hops, P, K, thr / 2, NULL);
        *out = straggler_confirm(&t->track, now, relaxed, K, t->named);
    }
    t->probe_n = 0;
    return 0;
}

int observe_step(trainer_t *t, const step_result_t *r, char *err, size_t errlen) {
    const config_t *c = &t->cfg;
    const long i = r->i, spe = t->steps_per_epoch;
    const int epochs = (int)((t->total_steps + spe - 1) / spe);
    const ddp_stats_t st = r->st;
    t->step_ms[i] = r->ms;
    t->exposed_ms[i] = st.exposed_ms;
    t->comm_ms[i] = st.comm_ms;
    t->wire_bytes[i] = (double)st.wire_bytes;
    t->compress_ms[i] = st.compress_ms;
    if (t->probes) { /* the newest probe_cap steps since the last record */
        if (t->probe_n == t->probe_cap) memmove(t->probes, t->probes + PROBE_FIELDS,
                                                (size_t)(t->probe_cap - 1) * PROBE_FIELDS * sizeof *t->probes);
        else t->probe_n++;
        ddp_probe(t->ddp, t->probes + (size_t)(t->probe_n - 1) * PROBE_FIELDS);
    }
    if (t->step % c->every_steps == 0 || t->step == t->total_steps) {
        double v = r->loss; /* the global batch's mean: every rank's mean averaged */
        if (t->ddp && ddp_allreduce_double(t->ddp, &v, 1, COLL_AVG)) return snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
        t->logged_loss = v;
        straggler_t sg = {-1, STRAGGLER_NONE, 0};
        if (t->probes && attribute(t, i, &sg)) return snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
        const step_record_t rec = {.step = t->step, .epoch = (int)r->epoch + 1, .loss = v, .step_ms = r->ms, .lr = r->lr,
                                   .compute_ms = r->ms - st.exposed_ms, .comm_ms = st.comm_ms,
                                   .exposed_comm_ms = st.exposed_ms, .wire_bytes = (double)st.wire_bytes,
                                   .compress_ms = c->compress != CFG_COMPRESS_NONE ? st.compress_ms : -1,
                                   .straggler = t->probes ? &sg : NULL};
        metrics_step(&t->m, &rec);
    }
    metrics_progress(&t->m, (int)r->epoch + 1, epochs, t->step, t->total_steps,
                     isnan(t->logged_loss) ? r->loss : t->logged_loss, 1e3 * (double)t->global_batch / r->ms);
    if (c->ckpt_dir[0] && ((c->ckpt_every > 0 && t->step % c->ckpt_every == 0) || t->step == t->total_steps) &&
        trainer_checkpoint(t, err, errlen))
        return -1;
    FAULT_HOOK_STEP_DONE(t->step);
    const int last = t->step >= t->total_steps, epoch_end = r->b == spe - 1;
    if (c->eval_every > 0 && ((epoch_end && (r->epoch + 1) % c->eval_every == 0) || last)) {
        double acc, tl;
        if (trainer_evaluate(t, &acc, &tl)) return snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
        t->last_acc = acc;
        metrics_eval(&t->m, (int)r->epoch + 1, acc, tl, t->test.tokens != NULL);
    }
    return 0;
}

int observe_finish(trainer_t *t, long first, char *err, size_t errlen) {
    const config_t *c = &t->cfg;
    const long ran = t->step - first;
    const double med = median_after(t->step_ms, ran, WARMUP_STEPS);
    const double exp_med = median_after(t->exposed_ms, ran, WARMUP_STEPS);
    const done_record_t d = {.ranks = t->ranks, .steps = t->step, .median_step_ms = med,
                             .samples_per_s = 1e3 * (double)t->global_batch / med, .test_acc = t->last_acc,
                             .wall_s = now_s() - t->t_begin, .compute_ms = med - exp_med,
                             .comm_ms = median_after(t->comm_ms, ran, WARMUP_STEPS), .exposed_comm_ms = exp_med,
                             .wire_bytes = median_after(t->wire_bytes, ran, WARMUP_STEPS),
                             .compress_ms = c->compress != CFG_COMPRESS_NONE ? median_after(t->compress_ms, ran, WARMUP_STEPS) : -1,
                             .compress = compress_name((compress_t)c->compress), .named = t->named,
                             .sync = !t->ddp ? NULL : ddp_fused(t->ddp) ? "fused" : "collectives"};
    if (c->profile && t->rank == 0) write_profile(t, med);
    if (t->rank == 0 && t->ddp && ddp_alternating(t->ddp) && ran > WARMUP_STEPS + 1) {
        /* ddp.h: blocks of the fused update, then of the collectives, in turn */
        double *half = malloc((size_t)ran * sizeof *half);
        long n = 0;
        for (int odd = 0; half && odd < 2; odd++) {
            n = 0;
            for (long i = WARMUP_STEPS; i < ran; i++)
                if (i / DDP_ALTERNATE_BLOCK % 2 == odd && i % DDP_ALTERNATE_BLOCK) half[n++] = t->step_ms[i];
            printf("%s %.3f ms", odd ? ", the collectives'" : "ddp-train: alternating: the fused update's median step",
                   median_after(half, n, 0));
        }
        printf(" (about %ld steps each)\n", n);
        free(half);
    }
    metrics_done(&t->m, &d);
    if (t->rank == 0) {
        printf("ddp-train: %ld steps, median step %.3f ms", t->step, med);
        if (t->ddp) printf(" (exposed communication %.3f ms)", exp_med);
        printf(", %.0f samples/s", d.samples_per_s);
        if (t->last_acc >= 0) printf(", test accuracy %.4f", t->last_acc);
        printf("\n");
    }
    if (t->rank == 0 && c->params_out[0]) {
        const float *p = trainer_params_host(t);
        if (path_make_parents(c->params_out, "[log] params", err, errlen)) return -1;
        FILE *f = p ? fopen(c->params_out, "wb") : NULL;
        if (!f || fwrite(p, sizeof(float), t->g->nweights, f) != t->g->nweights || fclose(f)) {
            snprintf(err, errlen, "[log] params: cannot write %s", c->params_out);
            return -1;
        }
    }
    return 0;
}
