#include "train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

static int load_data(trainer_t *t, char *err, size_t errlen) {
    const config_t *c = &t->cfg;
    if (c->dataset == CFG_DATA_FMNIST) return fmnist_load(c->dir, &t->train, &t->test, err, errlen);
    int shape[3] = {1, 1, 1};
    for (int i = 0; i < c->nshape; i++) shape[3 - c->nshape + i] = c->shape[i];
    return synthetic_make(&t->train, &t->test, shape, c->classes, c->train_size, c->test_size, (uint64_t)c->seed, err, errlen);
}

static optim_cfg_t optim_config(const config_t *c) {
    return (optim_cfg_t){
        .kind = c->optim == CFG_OPTIM_ADAMW ? OPTIM_ADAMW : OPTIM_SGD,
        .lr = (float)c->lr, .momentum = (float)c->momentum, .weight_decay = (float)c->weight_decay,
        .nesterov = c->nesterov, .beta1 = (float)c->beta1, .beta2 = (float)c->beta2, .eps = (float)c->eps,
        .schedule = c->schedule == CFG_SCHED_STEP ? SCHED_STEP : c->schedule == CFG_SCHED_COSINE ? SCHED_COSINE : SCHED_CONSTANT,
        .warmup_steps = c->warmup_steps, .step_every = c->step_every, .gamma = (float)c->gamma, .min_lr = (float)c->min_lr,
    };
}

int trainer_init(trainer_t *t, const config_t *cfg, int rank, int ranks, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    t->t_begin = now_s();
    t->cfg = *cfg;
    t->rank = rank;
    t->ranks = ranks;
    t->last_acc = -1;
    if (load_data(t, err, errlen)) return -1;
    const int B = cfg->batch_size;
    if (t->train.n < B) {
        snprintf(err, errlen, "[data] batch_size: %d is larger than the training set (%d samples)", B, t->train.n);
        return -1;
    }
    layer_spec_t specs[LAYERS_MAX];
    const int n = model_layers(cfg, t->train.classes, specs, LAYERS_MAX, err, errlen);
    if (n < 0) return -1;
    char e[512];
    if (graph_create(&t->g, specs, n, t->train.shape, t->train.classes, B, DEV_CPU, e, sizeof e)) {
        snprintf(err, errlen, "[model]: %s", e);
        return -1;
    }
    graph_init_params(t->g, (uint64_t)cfg->seed);
    t->g->seed = (uint64_t)cfg->seed;
    t->g->rank = rank;
    t->ocfg = optim_config(cfg);
    t->steps_per_epoch = t->train.n / B;
    t->total_steps = t->steps_per_epoch * cfg->epochs;
    if (cfg->max_steps > 0 && cfg->max_steps < t->total_steps) t->total_steps = cfg->max_steps;
    t->perm = malloc((size_t)t->train.n * sizeof *t->perm);
    t->step_ms = calloc((size_t)t->total_steps + 1, sizeof *t->step_ms);
    if (!t->perm || !t->step_ms || optim_init(&t->opt, &t->ocfg, 0, t->g->nweights)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return metrics_open(&t->m, rank == 0 ? cfg->metrics : "", rank == 0 ? cfg->progress : CFG_PROGRESS_OFF, err, errlen);
}

void trainer_free(trainer_t *t) {
    metrics_close(&t->m);
    graph_destroy(t->g);
    optim_free(&t->opt);
    dataset_free(&t->train);
    dataset_free(&t->test);
    free(t->perm);
    free(t->step_ms);
    t->g = NULL;
    t->perm = NULL;
    t->step_ms = NULL;
}

void trainer_evaluate(trainer_t *t, double *acc, double *loss) {
    graph_t *g = t->g;
    const int B = g->batch;
    long correct = 0;
    double lsum = 0.0;
    uint32_t idx[4096];
    g->training = 0;
    for (int i = 0; i < t->test.n; i += B) {
        const int n = t->test.n - i < B ? t->test.n - i : B;
        for (int k = 0; k < n; k += 4096) {
            const int m = n - k < 4096 ? n - k : 4096;
            for (int j = 0; j < m; j++) idx[j] = (uint32_t)(i + k + j);
            data_gather(&t->test, idx, m, g->input.data + (size_t)k * tensor_sample_size(&g->input), g->labels + k);
        }
        lsum += (double)graph_forward(g, n) * n;
        correct += graph_correct(g);
    }
    *acc = t->test.n ? (double)correct / t->test.n : 0.0;
    *loss = t->test.n ? lsum / t->test.n : 0.0;
}

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

#define WARMUP_STEPS 20

int trainer_run(trainer_t *t, char *err, size_t errlen) {
    (void)err, (void)errlen;
    const config_t *c = &t->cfg;
    graph_t *g = t->g;
    const int B = c->batch_size;
    long step = 0;
    int epoch = 0;
    double loss = NAN;
    t->m.t_start = now_s();
    while (step < t->total_steps) {
        epoch++;
        data_permutation(t->perm, t->train.n, (uint64_t)c->seed, epoch - 1);
        for (long b = 0; b < t->steps_per_epoch && step < t->total_steps; b++) {
            const double s0 = now_s();
            const uint32_t *idx = t->perm + b * B;
            data_gather(&t->train, idx, B, g->input.data, g->labels);
            g->training = 1;
            g->step = (uint64_t)step;
            loss = graph_forward(g, B);
            graph_backward(g);
            const float lr = optim_lr(&t->ocfg, step, t->total_steps);
            optim_step(&t->opt, g->params, g->grads, lr);
            const double ms = 1e3 * (now_s() - s0);
            t->step_ms[step++] = ms;
            if (step % c->every_steps == 0 || step == t->total_steps) {
                const step_record_t r = {.step = step, .epoch = epoch, .loss = loss, .step_ms = ms, .lr = lr,
                                         .compute_ms = -1};
                metrics_step(&t->m, &r);
            }
            metrics_progress(&t->m, epoch, c->epochs, step, t->total_steps, loss, 1e3 * B * t->ranks / ms);
        }
        const int last = step >= t->total_steps;
        if (c->eval_every > 0 && (epoch % c->eval_every == 0 || last)) {
            double acc, tl;
            trainer_evaluate(t, &acc, &tl);
            t->last_acc = acc;
            metrics_eval(&t->m, epoch, acc, tl);
        }
    }
    const double med = median_after(t->step_ms, step, WARMUP_STEPS);
    const done_record_t d = {.ranks = t->ranks, .steps = step, .median_step_ms = med,
                             .samples_per_s = 1e3 * B * t->ranks / med, .test_acc = t->last_acc,
                             .wall_s = now_s() - t->t_begin, .compute_ms = -1};
    metrics_done(&t->m, &d);
    if (t->rank == 0)
        printf("ddp-train: %ld steps, median step %.3f ms, %.0f samples/s%s", step, med, d.samples_per_s,
               t->last_acc >= 0 ? "" : "\n");
    if (t->rank == 0 && t->last_acc >= 0) printf(", test accuracy %.4f\n", t->last_acc);
    return 0;
}
