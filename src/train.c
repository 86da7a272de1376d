#include "train.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "compress.h"
#include "faults.h"
#include "model.h"
#include "observe.h"
#include "ops_cpu.h"
#include "paths.h"
#include "straggler.h"

/* ddp.fused_update = auto: on where the ranks and their BLAS threads fill
 * the node's cores (the engine uses it only when every rank is on this node):
 * there a collective overlapped with backward only takes turns with the GEMMs
 * on the same cores, and reading the peers' gradients in place after backward
 * moves fewer bytes (docs/PERFORMANCE.md). */
static int fuse_update(const config_t *cfg, int ranks) {
    if (cfg->fused_update != 0) return cfg->fused_update == 1;
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return (long)ranks * ops_cpu_threads() >= cores;
}

static int load_data(trainer_t *t, char *err, size_t errlen) {
    const config_t *c = &t->cfg;
    if (c->dataset == CFG_DATA_FMNIST) return fmnist_load(c->dir, &t->train, &t->test, err, errlen);
    if (c->dataset == CFG_DATA_TEXT) {
        if (text_load(c->path, c->block_size, c->val_fraction, &t->train, &t->test, err, errlen) == 0) return 0;
        char e[1024];
        snprintf(e, sizeof e, "[data] path: %s", err);
        return snprintf(err, errlen, "%s", e), -1;
    }
    if (c->arch == CFG_ARCH_GPT) /* synthetic tokens: train_size of them, split as a text */
        return text_synthetic(c->classes, c->train_size, c->block_size, c->val_fraction, (uint64_t)c->seed, &t->train,
                              &t->test, err, errlen);
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

static int bcast(trainer_t *t, void *buf, size_t n, coll_dtype_t type, char *err, size_t errlen) {
    if (!t->ddp || ddp_broadcast(t->ddp, buf, n, type) == 0) return 0;
    snprintf(err, errlen, "%s", ddp_error(t->ddp));
    t->coll_failed = 1;
    return -1;
}

static float *state_array(trainer_t *t, int k) { return optim_state(&t->opt, k); }

/* This rank's optimiser state array k in host memory (a copy on a GPU). */
static const float *state_host(trainer_t *t, int k) {
    if (t->dev == DEV_CPU) return state_array(t, k);
    float *h = t->host_state + (size_t)k * t->opt.n;
    return device_to_host(t->dev, h, state_array(t, k), t->opt.n * sizeof(float)) ? NULL : h;
}

const float *trainer_params_host(trainer_t *t) {
    if (t->dev == DEV_CPU) return t->g->params;
    return graph_params_to_host(t->g, t->host_params) ? NULL : t->host_params;
}

/* Rank 0's parameters to every rank, through host memory (start-up and
 * resume: not worth a device path) */
static int bcast_params(trainer_t *t, float *host, char *err, size_t errlen) {
    if (bcast(t, host, t->g->nalloc, COLL_FLOAT32, err, errlen)) return -1;
    if (host != t->g->params && graph_params_from_host(t->g, host))
        return snprintf(err, errlen, "copying parameters to the device: %s", device_error()), -1;
    return 0;
}

/* PowerSGD's state in a checkpoint's extra arrays: array 0 holds a header
 * {mode, powersgd_rank, ranks, Q floats} and then Q; array 1 + r holds rank
 * r's residual. Q is at most half the weights (psgd_worth_it), so it fits. */
#define PSGD_HDR 4

static int psgd_fits(const trainer_t *t) { return PSGD_HDR + ddp_compress_q_len(t->ddp) <= t->g->nweights; }

/* x = {arrays in the file, its PowerSGD header}, the same on every rank. */
static int psgd_resume(trainer_t *t, const double *x, float *const *extra, char *err, size_t errlen) {
    const int has_q = x[0] >= 1 && x[1] == CFG_COMPRESS_POWERSGD && x[2] == t->cfg.powersgd_rank &&
                      x[4] == (double)ddp_compress_q_len(t->ddp) && psgd_fits(t);
    const int has_resid = has_q && x[3] == t->ranks && x[0] == 1 + t->ranks;
    if (has_q && ddp_compress_load(t->ddp, extra ? extra[0] + PSGD_HDR : NULL, extra ? extra + 1 : NULL, has_resid))
        return snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
    if (t->rank == 0 && !has_resid)
        printf("ddp-train: note: %s: PowerSGD's error feedback starts from zero%s\n",
               has_q ? "the checkpoint was written by another number of ranks" : "the checkpoint holds no PowerSGD state for "
               "this powersgd_rank", has_q ? "" : " and Q afresh");
    return 0;
}

/* Rank 0 reads the newest checkpoint; everyone gets its parameters, optimiser
 * state and position. Returns 0 (resumed or nothing to resume) or -1. */
static int resume_rest(trainer_t *t, double *meta, float *const *full, float *params, float *const *extra,
                       const char *path, char *err, size_t errlen);

static int resume(trainer_t *t, char *err, size_t errlen) {
    const int ns = optim_state_arrays(&t->opt);
    const int zero = t->cfg.zero && t->ddp;
    const size_t N = t->g->nalloc;
    /* full-length state arrays: on rank 0 only under ZeRO-1 (it scatters
     * the shards afterwards), on every rank otherwise */
    float *full[2] = {NULL, NULL};
    for (int k = 0; k < ns; k++)
        full[k] = zero ? (t->rank == 0 ? t->ckpt_state + (size_t)k * N : NULL)
                       : t->dev != DEV_CPU ? t->host_state + (size_t)k * N : state_array(t, k);
    float *params = t->dev == DEV_CPU ? t->g->params : t->host_params;
    /* status (1 loaded, 0 none, -1 failed), step, seed hi, seed lo, optim_t, global batch,
     * extra arrays in the file, and the PowerSGD header of its first extra array */
    double meta[6 + 1 + PSGD_HDR] = {0};
    char path[4300] = "";
    float **extra = NULL;
    if (t->rank == 0) {
        const int found = ckpt_find(t->cfg.ckpt_dir, path, sizeof path, err, errlen);
        ckpt_meta_t m = {.nweights = t->g->nweights, .state_arrays = ns};
        if (t->ckpt_extra && (extra = malloc((size_t)(1 + t->ranks) * sizeof *extra))) {
            m.extra_arrays = 1 + t->ranks;
            for (int k = 0; k < m.extra_arrays; k++) extra[k] = t->ckpt_extra + (size_t)k * N;
        }
        if (found < 0) meta[0] = -1;
        else if (found == 1 && ckpt_load(path, &m, t->model_text, params, full, extra, err, errlen)) meta[0] = -1;
        else if (found == 1) {
            meta[0] = 1, meta[1] = (double)m.step, meta[4] = (double)m.optim_t, meta[5] = (double)m.global_batch;
            meta[2] = (double)(m.seed >> 32), meta[3] = (double)(m.seed & 0xffffffffu);
            meta[6] = m.extra_arrays;
            for (int k = 0; extra && m.extra_arrays > 0 && k < PSGD_HDR; k++) meta[7 + k] = t->ckpt_extra[k];
        }
    }
    const int rc = resume_rest(t, meta, full, params, extra, path, err, errlen);
    free(extra);
    return rc;
}

/* resume, after rank 0 has read the checkpoint: everyone gets it */
static int resume_rest(trainer_t *t, double *meta, float *const *full, float *params, float *const *extra,
                       const char *path, char *err, size_t errlen) {
    const int ns = optim_state_arrays(&t->opt);
    const int zero = t->cfg.zero && t->ddp;
    const size_t N = t->g->nalloc;
    if (bcast(t, meta, 6 + 1 + PSGD_HDR, COLL_FLOAT64, err, errlen)) return -1;
    if (meta[0] < 0) {
        if (t->rank != 0) snprintf(err, errlen, "rank 0 could not resume from its checkpoint (see its message)");
        return -1;
    }
    if (meta[0] == 0) return 0;
    if (bcast_params(t, params, err, errlen)) return -1;
    for (int k = 0; k < ns; k++) {
        int rc = 0;
        if (!zero) {
            if (bcast(t, full[k], N, COLL_FLOAT32, err, errlen)) return -1;
            rc = device_from_host(t->dev, state_array(t, k), full[k], N * sizeof(float));
        } else {
            float *shard = t->dev == DEV_CPU ? state_array(t, k) : t->host_state + (size_t)k * t->opt.n;
            if (ddp_scatter_shards(t->ddp, full[k], shard))
                return t->coll_failed = 1, snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
            rc = device_from_host(t->dev, state_array(t, k), shard, t->opt.n * sizeof(float));
        }
        if (rc) return snprintf(err, errlen, "resume: copying the optimiser state to the device: %s", device_error()), -1;
    }
    t->step = (long)meta[1];
    if (t->cfg.compress == CFG_COMPRESS_POWERSGD && psgd_resume(t, meta + 6, extra, err, errlen)) return -1;
    if (t->ddp) ddp_set_steps(t->ddp, t->step);
    t->opt.t = (long)meta[4];
    t->seed = (uint64_t)meta[2] << 32 | (uint64_t)meta[3];
    t->g->seed = t->seed;
    if (t->rank == 0) {
        printf("ddp-train: resumed from %s at step %ld\n", path, t->step);
        if ((long)meta[5] != t->global_batch)
            printf("ddp-train: note: the checkpoint was written with a global batch of %ld samples, this run has %ld: "
                   "the step count is kept, so data order and schedule differ from the original run\n",
                   (long)meta[5], t->global_batch);
        if (t->seed != (uint64_t)t->cfg.seed)
            printf("ddp-train: note: the checkpoint's seed %llu is used for data order and dropout, not [train] seed %ld\n",
                   (unsigned long long)t->seed, t->cfg.seed);
        fflush(stdout);
    }
    return 0;
}

/* This rank's index among the ranks on its node (the default GPU). */
static int node_local_rank(MPI_Comm comm) {
    MPI_Comm node;
    int r = 0;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS) return 0;
    MPI_Comm_rank(node, &r);
    MPI_Comm_free(&node);
    return r;
}

/* A rank stopped before it gets here is named by the start-up guard
 * (main.c, liveness_guard), which is on for the whole set-up: the
 * agreement itself needs no timeout. */
int trainer_agree(MPI_Comm comm, int failed, char *err, size_t errlen) {
    int me, first;
    MPI_Comm_rank(comm, &me);
    int mine = failed ? me : INT_MAX;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
    if (first == INT_MAX) return 0;
    if (!failed) snprintf(err, errlen, "rank %d could not start (see its message); stopping", first);
    return -1;
}

/* the local set-up failed on this rank: tell the others, then fail */
#define SETUP_FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto setup_failed; } while (0)

static int init(trainer_t *t, const config_t *cfg, MPI_Comm comm, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    t->t_begin = now_s();
    t->cfg = *cfg;
    MPI_Comm_rank(comm, &t->rank);
    MPI_Comm_size(comm, &t->ranks);
    t->last_acc = -1;
    t->seed = (uint64_t)cfg->seed;
    t->dev = cfg->device == CFG_DEVICE_CUDA ? DEV_CUDA : DEV_CPU;
    /* every rank gets here (the configs agree), so the node split is safe */
    if (t->dev != DEV_CPU && device_open(t->dev, cfg->gpu_index, node_local_rank(comm), cfg->tf32, err, errlen))
        goto setup_failed;

    /* local set-up: data, model, buffers */
    if (load_data(t, err, errlen)) goto setup_failed;
    const int B = cfg->batch_size;
    t->global_batch = (long)t->ranks * B * cfg->accumulate;
    if (t->train.n < t->global_batch)
        SETUP_FAIL("[data] batch_size: %d x %d ranks x %d accumulation steps is larger than the training set (%d samples)",
                   B, t->ranks, cfg->accumulate, t->train.n);
    layer_spec_t specs[LAYERS_MAX];
    const int n = model_layers(cfg, t->train.classes, specs, LAYERS_MAX, err, errlen);
    if (n < 0) goto setup_failed;
    char e[512];
    if (graph_create(&t->g, specs, n, t->train.shape, t->train.classes, B, t->dev, e, sizeof e))
        SETUP_FAIL("[model]: %s", e);
    if (graph_pad_params(t->g, (size_t)t->ranks)) SETUP_FAIL("out of memory for parameters");
    if (cfg->profile && graph_profile(t->g)) SETUP_FAIL("out of memory for [log] profile");
    if (t->dev != DEV_CPU && !(t->host_params = tensor_alloc(t->g->nalloc))) SETUP_FAIL("out of memory for parameters");
    graph_init_params(t->g, t->seed);
    t->g->seed = t->seed;
    t->g->rank = t->rank;
    FILE *mt = fmemopen(t->model_text, sizeof t->model_text - 1, "w");
    if (mt) {
        config_write(cfg, mt, 1);
        fclose(mt);
    }
    t->steps_per_epoch = t->train.n / t->global_batch;
    t->total_steps = t->steps_per_epoch * cfg->epochs;
    if (cfg->max_steps > 0 && cfg->max_steps < t->total_steps) t->total_steps = cfg->max_steps;
    t->perm = malloc((size_t)t->train.n * sizeof *t->perm);
    t->step_ms = calloc((size_t)t->total_steps + 1, sizeof *t->step_ms);
    t->exposed_ms = calloc((size_t)t->total_steps + 1, sizeof *t->exposed_ms);
    t->comm_ms = calloc((size_t)t->total_steps + 1, sizeof *t->comm_ms);
    t->wire_bytes = calloc((size_t)t->total_steps + 1, sizeof *t->wire_bytes);
    t->compress_ms = calloc((size_t)t->total_steps + 1, sizeof *t->compress_ms);
    if (!t->perm || !t->step_ms || !t->exposed_ms || !t->comm_ms || !t->wire_bytes || !t->compress_ms)
        SETUP_FAIL("out of memory");
    /* the metrics file is opened after a possible resume (to append then);
     * check now, while a failure can still be agreed on, that it can be written */
    if (t->rank == 0 && cfg->metrics[0]) {
        if (path_make_parents(cfg->metrics, "[log] metrics", err, errlen)) goto setup_failed;
        FILE *probe = fopen(cfg->metrics, "a");
        if (!probe) SETUP_FAIL("[log] metrics: cannot write %s: %s", cfg->metrics, strerror(errno));
        fclose(probe);
    }
    /* every rank writes its own flight-recorder dump there (each node's own directory) */
    if (cfg->trace_dir[0]) {
        if (path_make_dir(cfg->trace_dir, "[log] trace_dir", err, errlen)) goto setup_failed;
        coll_trace_set_dir(cfg->trace_dir);
    }

    /* every rank must get here before the first collective, or the others
     * would wait for it forever */
    const int agreed = trainer_agree(comm, 0, err, errlen);
    if (agreed) return agreed;
    FAULT_HOOK_STAGE("setup", t->rank);
    /* compression runs at one rank too, so a run's result does not depend on
     * the rank count beyond the averaging */
    if (t->ranks > 1 || cfg->compress != CFG_COMPRESS_NONE) {
        ddp_tensor_t *tens = calloc((size_t)t->g->nparam, sizeof *tens);
        if (!tens) return snprintf(err, errlen, "out of memory"), -1;
        for (int i = 0; i < t->g->nparam; i++)
            tens[i] = (ddp_tensor_t){t->g->param[i].offset, t->g->param[i].rows, t->g->param[i].cols};
        const ddp_options_t o = {.bucket_mb = cfg->bucket_mb, .overlap = cfg->overlap, .zero = cfg->zero,
                                 .algorithm = (coll_algo_t)cfg->algorithm, .timeout_s = cfg->timeout_s,
                                 .cuda_stream = device_stream(t->dev), .compress = (ddp_compress_t)cfg->compress,
                                 .powersgd_rank = cfg->powersgd_rank, .powersgd_start = cfg->powersgd_start,
                                 .seed = (uint64_t)cfg->seed, .tensors = tens, .ntensors = t->g->nparam,
                                 .fuse = fuse_update(cfg, t->ranks)};
        const int rc = ddp_create(&t->ddp, comm, t->g->params, t->g->grads, t->g->nweights, t->g->nalloc, &o, err, errlen);
        free(tens);
        if (rc) return -1;
        /* parameters and gradients in memory the node's peers map: shared-memory
         * collectives read the gradient buckets in place (zero-copy) */
        float *sp, *sg;
        if (t->dev == DEV_CPU && t->ranks > 1) {
            const int shared = ddp_share_buffers(t->ddp, &sp, &sg);
            if (shared == 0) graph_use_flat(t->g, sp, sg);
            else if (shared < 0) fprintf(stderr, "rank %d: note: %s; ordinary buffers instead\n", t->rank, ddp_error(t->ddp));
        }
        t->g->on_grad = ddp_grad_ready;
        t->g->on_grad_user = t->ddp;
        /* every replica starts from rank 0's parameters, whatever its seed */
        float *p = t->dev == DEV_CPU ? t->g->params : t->host_params;
        if (p != t->g->params && graph_params_to_host(t->g, p)) return snprintf(err, errlen, "%s", device_error()), -1;
        if (bcast_params(t, p, err, errlen)) return -1;
    }
    t->ocfg = optim_config(cfg);
    if (optim_init_on(&t->opt, &t->ocfg, t->ddp ? ddp_shard_size(t->ddp) : t->g->nalloc, t->dev))
        return snprintf(err, errlen, "out of memory for the optimiser state"), -1;
    /* host copies of the state for checkpoints: this rank's arrays on a GPU,
     * and without ZeRO resume reads full arrays there too */
    if (t->dev != DEV_CPU && optim_state_arrays(&t->opt) &&
        !(t->host_state = tensor_alloc((size_t)optim_state_arrays(&t->opt) * t->g->nalloc)))
        return snprintf(err, errlen, "out of memory for the optimiser state's host copy"), -1;
    if (t->ddp && cfg->zero && cfg->ckpt_dir[0] && t->rank == 0 &&
        !(t->ckpt_state = tensor_alloc((size_t)optim_state_arrays(&t->opt) * t->g->nalloc + 1)))
        return snprintf(err, errlen, "out of memory for checkpoint staging"), -1;
    if (t->ddp && t->ranks > 1) {
        /* probes of the steps between two step records (at most 1000: older ones are dropped) */
        t->probe_cap = cfg->every_steps < 1000 ? (int)cfg->every_steps : 1000;
        /* each rank's window, then its timed hop (ddp_hop_probe) */
        const size_t stride = (size_t)t->probe_cap * PROBE_FIELDS + 1;
        t->probes = calloc(stride, sizeof *t->probes);
        t->probes_all = calloc(stride * (size_t)t->ranks, sizeof *t->probes_all);
        t->hops = calloc((size_t)t->ranks + (size_t)t->probe_cap, sizeof *t->hops); /* then a window of compute times */
        t->named = calloc((size_t)t->ranks * 3, sizeof *t->named);
        if (!t->probes || !t->probes_all || !t->hops || !t->named) return snprintf(err, errlen, "out of memory"), -1;
    }
    if (cfg->compress == CFG_COMPRESS_POWERSGD && cfg->ckpt_dir[0] && t->rank == 0 &&
        !(t->ckpt_extra = tensor_alloc((size_t)(1 + t->ranks) * t->g->nweights)))
        return snprintf(err, errlen, "out of memory for checkpoint staging of PowerSGD's state"), -1;
    if (cfg->ckpt_dir[0] && cfg->resume == CFG_RESUME_AUTO && resume(t, err, errlen)) return -1;
    return metrics_open(&t->m, t->rank == 0 ? cfg->metrics : "", t->rank == 0 ? cfg->progress : CFG_PROGRESS_OFF,
                        t->step > 0, err, errlen);
setup_failed:
    return trainer_agree(comm, 1, err, errlen);
}

int trainer_init(trainer_t *t, const config_t *cfg, MPI_Comm comm, char *err, size_t errlen) {
    const int rc = init(t, cfg, comm, err, errlen);
    return rc == -1 && t->coll_failed ? -2 : rc; /* the others may be blocked: abort, not a clean exit */
}

void trainer_free(trainer_t *t) {
    metrics_close(&t->m);
    ddp_destroy(t->ddp);
    graph_destroy(t->g);
    optim_free(&t->opt);
    dataset_free(&t->train);
    dataset_free(&t->test);
    free(t->perm);
    free(t->step_ms);
    free(t->exposed_ms);
    free(t->comm_ms);
    free(t->wire_bytes);
    free(t->compress_ms);
    free(t->probes);
    free(t->probes_all);
    free(t->hops);
    free(t->named);
    tensor_free(t->ckpt_extra);
    tensor_free(t->ckpt_state);
    tensor_free(t->host_params);
    tensor_free(t->host_state);
    memset(t, 0, sizeof *t);
}

int trainer_evaluate(trainer_t *t, double *acc, double *loss) {
    graph_t *g = t->g;
    const int B = g->batch;
    const int lo = (int)((long)t->test.n * t->rank / t->ranks), hi = (int)((long)t->test.n * (t->rank + 1) / t->ranks);
    double sums[2] = {0, 0}; /* correct, loss x samples */
    for (int i = lo; i < hi; i += B) { /* this rank's test samples are contiguous */
        const int n = hi - i < B ? hi - i : B;
        float *x;
        int32_t *y;
        graph_input_host(g, &x, &y);
        data_gather_range(&t->test, i, n, x, y);
        if (graph_input_commit(g, n)) return -1;
        graph_loss_reset(g);
        graph_eval_forward(g, n);
        sums[1] += graph_loss_sum(g) * n;
        sums[0] += graph_correct(g);
    }
    if (t->ddp && ddp_allreduce_double(t->ddp, sums, 2, COLL_SUM)) return -1;
    *acc = t->test.n ? sums[0] / ((double)t->test.n * dataset_positions(&t->test)) : 0.0; /* per position */
    *loss = t->test.n ? sums[1] / t->test.n : 0.0;
    return 0;
}

#define CKPT_WAIT_S 600.0

int trainer_checkpoint(trainer_t *t, char *err, size_t errlen) {
    const int ns = optim_state_arrays(&t->opt);
    float *state[2] = {NULL, NULL};
    if (t->ddp) ddp_slow_phase_begin(t->ddp); /* every rank answers liveness pings until the write is done */
    for (int k = 0; k < ns; k++) {
        const float *mine = state_host(t, k);
        if (!mine) return snprintf(err, errlen, "checkpoint: reading the optimiser state: %s", device_error()), -1;
        state[k] = (float *)mine;
        if (t->ddp && t->cfg.zero) { /* ZeRO-1: the full state assembled on rank 0 only */
            state[k] = t->ckpt_state ? t->ckpt_state + (size_t)k * t->g->nalloc : NULL;
            if (ddp_gather_shards(t->ddp, mine, state[k])) return snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
        }
    }
    const float *params = trainer_params_host(t);
    if (!params) return snprintf(err, errlen, "checkpoint: reading the parameters: %s", device_error()), -1;
    const float **extra = NULL;
    int nx = 0;
    if (t->cfg.compress == CFG_COMPRESS_POWERSGD && psgd_fits(t)) {
        nx = 1 + t->ranks;
        if (t->rank == 0 && !(extra = malloc((size_t)nx * sizeof *extra)))
            return snprintf(err, errlen, "checkpoint: out of memory"), -1;
        float *x = t->ckpt_extra;
        for (int k = 0; extra && k < nx; k++) extra[k] = x + (size_t)k * t->g->nweights;
        if (t->rank == 0) {
            const size_t q = ddp_compress_q_len(t->ddp);
            const float hdr[PSGD_HDR] = {CFG_COMPRESS_POWERSGD, (float)t->cfg.powersgd_rank, (float)t->ranks, (float)q};
            memcpy(x, hdr, sizeof hdr);
            memset(x + PSGD_HDR + q, 0, (t->g->nweights - PSGD_HDR - q) * sizeof *x);
        }
        if (ddp_compress_save(t->ddp, x ? x + PSGD_HDR : NULL, (float *const *)(extra ? extra + 1 : NULL))) {
            free(extra);
            return snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
        }
    }
    if (t->rank == 0) {
        const ckpt_meta_t m = {.step = t->step, .epoch = t->step / t->steps_per_epoch,
                               .batch_in_epoch = t->step % t->steps_per_epoch, .global_batch = t->global_batch,
                               .seed = t->seed, .optim_t = t->opt.t, .state_arrays = ns, .nweights = t->g->nweights,
                               .extra_arrays = nx};
        FAULT_HOOK_CHECKPOINT_BEGIN(t->step);
        const int rc = ckpt_save(t->cfg.ckpt_dir, &m, t->model_text, params, (const float *const *)state, extra, err, errlen);
        free(extra);
        if (rc) return -1;
    }
    /* The others wait here for rank 0's write, which may take longer than the
     * step watchdog allows (a slow file system): up to CKPT_WAIT_S, as long
     * as every rank still answers (a stopped writer is named within
     * ddp.timeout_s). */
    if (t->ddp && ddp_slow_phase_end(t->ddp, fmax(CKPT_WAIT_S, t->cfg.timeout_s)))
        return snprintf(err, errlen, "%s", ddp_error(t->ddp)), -1;
    return 0;
}

static int log_this_step(const trainer_t *t) {
    return (t->step + 1) % t->cfg.every_steps == 0 || t->step + 1 == t->total_steps;
}

static void profile_optimizer_done(trainer_t *t, double t0) {
    if (t->dev != DEV_CPU) device_sync(t->dev);
    t->prof_opt_ms += 1e3 * (now_s() - t0);
}

typedef struct {
    optim_t *opt;
    float *params;
    float lr;
} update_t;

static void update_range(void *u, const float *grads, size_t lo, size_t hi, size_t state_at) {
    update_t *x = u;
    optim_update(x->opt, x->params + lo, grads, 0, hi - lo, state_at, x->lr);
}

/* One optimiser step: K micro-batches, gradient sync, update, gather.
 * *loss = the mean loss of this rank's samples. 0, or -1 with err. */
static int train_step(trainer_t *t, long b, float *loss_out, float *lr_out, char *err, size_t errlen) {
    graph_t *g = t->g;
    const int B = t->cfg.batch_size, K = t->cfg.accumulate;
    const int prof = t->cfg.profile;
    graph_loss_reset(g);
    for (int k = 0; k < K; k++) {
        const long base = b * t->global_batch + ((long)k * t->ranks + t->rank) * B;
        float *x;
        int32_t *y;
        const double d0 = prof ? now_s() : 0;
        graph_input_host(g, &x, &y);
        data_gather(&t->train, t->perm + base, B, x, y);
        if (graph_input_commit(g, B)) return snprintf(err, errlen, "copying the batch to the device: %s", device_error()), -1;
        if (prof) t->prof_data_ms += 1e3 * (now_s() - d0);
        const graph_pass_t pass = {.step = (uint64_t)(t->step * K + k), .loss_scale = 1.0f / (float)K, .accumulate = k > 0};
        graph_train_forward(g, B, &pass);
        if (t->ddp && ddp_backward_begin(t->ddp, k == K - 1)) goto fail;
        graph_backward(g);
    }
    if (t->ddp && ddp_sync(t->ddp)) goto fail;
    const float lr = *lr_out = optim_lr(&t->ocfg, t->step, t->total_steps);
    const double o0 = prof ? now_s() : 0;
    optim_begin(&t->opt);
    if (t->ddp) {
        update_t u = {&t->opt, g->params, lr};
        if (ddp_update(t->ddp, update_range, &u)) goto fail;
        if (prof) profile_optimizer_done(t, o0);
        if (ddp_gather(t->ddp)) goto fail;
    } else {
        optim_update(&t->opt, g->params, g->grads, 0, g->nalloc, 0, lr);
        if (prof) profile_optimizer_done(t, o0);
    }
    /* on a GPU the loss is read (a wait) only for the steps that log it */
    *loss_out = g->dev == DEV_CPU || log_this_step(t) ? (float)(graph_loss_sum(g) / K) : NAN;
    return 0;
fail:
    snprintf(err, errlen, "%s", ddp_error(t->ddp));
    return -1;
}

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int trainer_run(trainer_t *t, char *err, size_t errlen) {
    const config_t *c = &t->cfg;
    const long first = t->step, spe = t->steps_per_epoch;
    long perm_epoch = -1;
    t->logged_loss = NAN;
    t->m.t_start = now_s();
    while (t->step < t->total_steps) {
        const long epoch = t->step / spe, b = t->step % spe;
        if (epoch != perm_epoch) data_permutation(t->perm, t->train.n, t->seed, epoch), perm_epoch = epoch;
        if (c->profile && t->step - first == WARMUP_STEPS) { /* the warm-up's steps are not profiled */
            graph_profile_reset(t->g);
            t->prof_data_ms = t->prof_opt_ms = 0;
            t->prof_steps = 0;
        }
        const double s0 = now_s(), c0 = t->ddp ? thread_cpu_s() : 0;
        step_result_t r = {.i = t->step - first, .epoch = epoch, .b = b};
        if (train_step(t, b, &r.loss, &r.lr, err, errlen)) return -1;
        r.ms = 1e3 * (now_s() - s0);
        t->prof_steps += c->profile;
        r.st = t->ddp ? ddp_last_stats(t->ddp) : (ddp_stats_t){0, 0, 0, 0};
        /* Exposed communication is the part of the step this thread did not
         * compute: blocked in a wait, or pre-empted by the progress thread
         * when both share a core (then it never appears as waiting). It is
         * at most the time communication ran. */
        if (t->ddp) r.st.exposed_ms = fmin(r.st.comm_ms, fmax(r.st.exposed_ms, r.ms - 1e3 * (thread_cpu_s() - c0)));
        t->step++;
        if (observe_step(t, &r, err, errlen)) return -1;
    }
    return observe_finish(t, first, err, errlen);
}
