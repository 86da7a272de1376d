#include "optim.h"

#include <math.h>
#include <stdlib.h>

#include "device.h"
#include "simd.h"
#include "tensor.h"


int optim_state_arrays(const optim_t *o) {
    if (o->cfg.kind == OPTIM_ADAMW) return 2;
    return o->cfg.momentum != 0.0f ? 1 : 0;
}

int optim_init_on(optim_t *o, const optim_cfg_t *cfg, size_t n, int dev) {
    *o = (optim_t){.cfg = *cfg, .n = n, .dev = dev};
    const int k = optim_state_arrays(o);
    if (k >= 1 && !(o->m = device_alloc_floats((device_t)dev, n))) return -1;
    if (k >= 2 && !(o->v = device_alloc_floats((device_t)dev, n))) return optim_free(o), -1;
    return 0;
}

int optim_init(optim_t *o, const optim_cfg_t *cfg, size_t n) { return optim_init_on(o, cfg, n, DEV_CPU); }

float *optim_state(const optim_t *o, int k) { return k == 0 ? o->m : k == 1 ? o->v : NULL; }

void optim_free(optim_t *o) {
    device_free((device_t)o->dev, o->m);
    device_free((device_t)o->dev, o->v);
    o->m = o->v = NULL;
}

/* PyTorch's SGD: d = g + wd p; v = mu v + d; step along v (or d + mu v). */
HOT_LOOP static void sgd(const optim_cfg_t *c, float *restrict p, const float *restrict g, float *restrict v, size_t n, float lr) {
    const float mu = c->momentum, wd = c->weight_decay;
    if (!v) {
        for (size_t i = 0; i < n; i++) p[i] -= lr * (g[i] + wd * p[i]);
    } else if (c->nesterov) {
        for (size_t i = 0; i < n; i++) {
            const float d = g[i] + wd * p[i];
            v[i] = mu * v[i] + d;
            p[i] -= lr * (d + mu * v[i]);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            v[i] = mu * v[i] + g[i] + wd * p[i];
            p[i] -= lr * v[i];
        }
    }
}

/* AdamW (decoupled weight decay), as PyTorch's. */
HOT_LOOP static void adamw(const optim_cfg_t *c, long t, float *restrict p, const float *restrict g, float *restrict m,
                  float *restrict v, size_t n, float lr) {
    const float b1 = c->beta1, b2 = c->beta2, eps = c->eps;
    const float bc1 = 1.0f - powf(b1, (float)t), bc2 = 1.0f - powf(b2, (float)t);
    const float step = lr / bc1, rbc2 = 1.0f / sqrtf(bc2), decay = 1.0f - lr * c->weight_decay;
    for (size_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        p[i] = p[i] * decay - step * m[i] / (sqrtf(v[i]) * rbc2 + eps);
    }
}

void optim_begin(optim_t *o) { o->t++; }

void optim_update(optim_t *o, float *params, const float *grads, size_t lo, size_t hi, size_t state_at, float lr) {
    const size_t n = hi - lo;
    if (o->dev == DEV_CUDA) {
        device_optim_update(o, params + lo, grads + lo, o->m ? o->m + state_at : NULL, o->v ? o->v + state_at : NULL, n, lr);
        return;
    }
    if (o->cfg.kind == OPTIM_ADAMW)
        adamw(&o->cfg, o->t, params + lo, grads + lo, o->m + state_at, o->v + state_at, n, lr);
    else
        sgd(&o->cfg, params + lo, grads + lo, o->m ? o->m + state_at : NULL, n, lr);
}

void optim_step(optim_t *o, float *params, const float *grads, float lr) {
    optim_begin(o);
    optim_update(o, params, grads, 0, o->n, 0, lr);
}

float optim_lr(const optim_cfg_t *c, long step, long total) {
    if (c->warmup_steps > 0 && step < c->warmup_steps) return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    const long s = step - c->warmup_steps;
    switch (c->schedule) {
    case SCHED_STEP:
        return c->step_every > 0 ? c->lr * powf(c->gamma, (float)(s / c->step_every)) : c->lr;
    case SCHED_COSINE: {
        const long span = total - c->warmup_steps;
        if (span <= 0) return c->lr;
        const double f = s >= span ? 1.0 : (double)s / (double)span;
        return c->min_lr + (c->lr - c->min_lr) * 0.5f * (float)(1.0 + cos(3.141592653589793 * f));
    }
    default:
        return c->lr;
    }
}
