/* Every op's forward and backward on the GPU against the CPU implementation
 * on the same inputs and parameters, and the optimisers' fused kernels
 * against optim.c. Run by tests/gpu/run; without a usable GPU it says why
 * and exits 77 (skipped).
 *
 * Bound: for every compared tensor, max |gpu - cpu| <= 1e-4 x max(|cpu|, 1e-3).
 * Both sides compute in float32; only summation order differs (cuBLAS and
 * cuDNN against OpenBLAS and our loops), which moves results by ~1e-6
 * relative; a wrong index, transpose, scale or missing accumulation moves
 * them by 1e-2 or more. Dropout masks are equal element for element (both
 * sides draw from rng_hash_uniform). The optimisers: bound 1e-6. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device.h"
#include "graph.h"
#include "layers.h"
#include "optim.h"
#include "rng.h"

#define BOUND 1e-4
static int passed, failed;
static device_t other = DEV_CUDA; /* --self-check: CPU against CPU (the harness itself) */

static double rel_err(const float *gpu, const float *cpu, size_t n) {
    double d = 0, m = 1e-3;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)gpu[i] - (double)cpu[i]);
        if (e > d || isnan(e)) d = isnan(e) ? INFINITY : e;
        if (fabs((double)cpu[i]) > m) m = fabs((double)cpu[i]);
    }
    return d / m;
}

static void result(int ok, const char *fmt, const char *a, const char *b, double v) {
    printf("%s: ", ok ? "ok" : "FAIL");
    printf(fmt, a, b, v);
    printf("\n");
    ok ? passed++ : failed++;
}

static void compare(const char *model, const char *what, const float *gpu_dev, const float *cpu, size_t n,
                    double bound) {
    float *h = malloc(n * sizeof *h + 4);
    device_to_host(other, h, gpu_dev, n * sizeof *h);
    const double e = rel_err(h, cpu, n);
    char label[256];
    snprintf(label, sizeof label, "%s", what);
    result(e <= bound, "%s: %s: relative error %.3g", model, label, e);
    free(h);
}

static graph_t *build(const char *layers, const int in[3], int classes, int batch, device_t dev) {
    layer_spec_t l[LAYERS_MAX];
    char err[512];
    graph_t *g = NULL;
    const int n = layers_parse(layers, l, LAYERS_MAX, err, sizeof err);
    if (n < 0 || graph_create(&g, l, n, in, classes, batch, dev, err, sizeof err) || graph_enable_input_grad(g)) {
        fprintf(stderr, "%s: %s\n", layers, err);
        exit(1);
    }
    graph_init_params(g, 7);
    g->seed = 11;
    g->step = 3;
    g->training = 1;
    return g;
}

/* forward + backward on rows [0, n) of one batch, then a second backward
 * accumulating into the gradients */
static void step(graph_t *g, const float *x, const int32_t *y, int n, int accumulate) {
    float *hx;
    int32_t *hy;
    graph_input_host(g, &hx, &hy);
    memcpy(hx, x, (size_t)n * tensor_sample_size(&g->input) * sizeof(float));
    memcpy(hy, y, (size_t)n * sizeof *hy);
    graph_input_commit(g, n);
    graph_loss_reset(g);
    g->accumulate = accumulate;
    graph_forward(g, n);
    graph_backward(g);
}

static void check_model(const char *layers, int C, int H, int W, int classes, int batch) {
    const int in[3] = {C, H, W};
    graph_t *c = build(layers, in, classes, batch, DEV_CPU), *g = build(layers, in, classes, batch, other);
    const size_t S = (size_t)C * H * W;
    float *x = malloc((size_t)batch * S * sizeof *x);
    int32_t *y = malloc((size_t)batch * sizeof *y);
    rng_t r;
    rng_seed(&r, 5, 0, 0);
    for (size_t i = 0; i < (size_t)batch * S; i++) x[i] = rng_normal(&r);
    for (int i = 0; i < batch; i++) y[i] = (int32_t)rng_below(&r, (uint64_t)classes);
    /* a full batch, a partial one, and accumulation on top */
    const int rows[2] = {batch, batch - 1};
    for (int k = 0; k < 2; k++) {
        const int n = rows[k];
        char what[64];
        step(c, x, y, n, 0);
        step(g, x, y, n, 0);
        const double lc = graph_loss_sum(c), lg = graph_loss_sum(g);
        snprintf(what, sizeof what, "n=%d loss", n);
        result(fabs(lg - lc) <= BOUND * fmax(fabs(lc), 1e-3), "%s: %s: relative error %.3g", layers, what,
               fabs(lg - lc) / fmax(fabs(lc), 1e-3));
        const float *pc = graph_probs(c), *pg = graph_probs(g);
        snprintf(what, sizeof what, "n=%d probabilities", n);
        result(rel_err(pg, pc, (size_t)n * classes) <= BOUND, "%s: %s: relative error %.3g", layers, what,
               rel_err(pg, pc, (size_t)n * classes));
        snprintf(what, sizeof what, "n=%d correct", n);
        result(graph_correct(c) == graph_correct(g), "%s: %s equal (%g)", layers, what, (double)graph_correct(c));
        for (int p = 0; p < c->nparam; p++) {
            snprintf(what, sizeof what, "n=%d d%s", n, c->param[p].name);
            compare(layers, what, g->grads + g->param[p].offset, c->grads + c->param[p].offset, c->param[p].count,
                    BOUND);
        }
        snprintf(what, sizeof what, "n=%d dinput", n);
        compare(layers, what, g->dinput, c->dinput, (size_t)n * S, BOUND);
    }
    step(c, x, y, batch, 1);
    step(g, x, y, batch, 1);
    compare(layers, "accumulated gradients", g->grads, c->grads, c->nweights, BOUND);
    graph_destroy(c);
    graph_destroy(g);
    free(x);
    free(y);
}

static void check_optim(const char *name, optim_cfg_t cfg) {
    const size_t n = 1000003;
    float *p = malloc(n * sizeof *p), *gr = malloc(n * sizeof *gr);
    rng_t r;
    rng_seed(&r, 9, 0, 0);
    for (size_t i = 0; i < n; i++) p[i] = rng_normal(&r), gr[i] = rng_normal(&r);
    float *dp = device_alloc_floats(other, n), *dg = device_alloc_floats(other, n);
    device_from_host(other, dp, p, n * sizeof *p);
    device_from_host(other, dg, gr, n * sizeof *gr);
    optim_t oc, og;
    optim_init(&oc, &cfg, n);
    optim_init_on(&og, &cfg, n, other);
    for (int s = 0; s < 3; s++) {
        optim_step(&oc, p, gr, cfg.lr);
        optim_step(&og, dp, dg, cfg.lr);
    }
    compare(name, "parameters after 3 steps", dp, p, n, 1e-6);
    for (int k = 0; k < optim_state_arrays(&oc); k++)
        compare(name, k ? "second moment" : "first state array", optim_state(&og, k), optim_state(&oc, k), n, 1e-6);
    optim_free(&oc);
    optim_free(&og);
    device_free(other, dp);
    device_free(other, dg);
    free(p);
    free(gr);
}

int main(int argc, char **argv) {
    char err[512];
    if (argc > 1 && !strcmp(argv[1], "--self-check")) other = DEV_CPU;
    if (device_open(other, -1, 0, 0, err, sizeof err)) {
        printf("test_gpu_ops: skipped: %s\n", err);
        return 77;
    }
    const double t0 = (double)clock() / CLOCKS_PER_SEC;
    check_model("linear(16) relu linear(8) gelu linear(12) tanh dropout(0.3) linear(5)", 1, 6, 6, 5, 9);
    check_model("conv(4,3) relu maxpool(2) conv(6,3,2,1) gelu flatten linear(7) tanh dropout(0.3) linear(5)", 2, 9, 9,
                5, 6);
    check_model("conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten linear(1024) relu dropout(0.4) linear(10)",
                1, 28, 28, 10, 32);
    check_model("linear(1024) relu linear(1024) relu linear(10)", 1, 28, 28, 10, 64);
    optim_cfg_t sgd = {.kind = OPTIM_SGD, .lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-4f};
    check_optim("sgd momentum", sgd);
    sgd.nesterov = 1;
    check_optim("sgd nesterov", sgd);
    sgd.momentum = 0, sgd.nesterov = 0;
    check_optim("sgd plain", sgd);
    const optim_cfg_t adam = {.kind = OPTIM_ADAMW, .lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                              .weight_decay = 0.01f};
    check_optim("adamw", adam);
    printf("test_gpu_ops (%.1f s CPU): %d passed, %d failed\n", (double)clock() / CLOCKS_PER_SEC - t0, passed, failed);
    return failed ? 1 : 0;
}
