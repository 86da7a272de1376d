/* Optimisers and learning-rate schedules on the flat buffers. State (momentum,
 * Adam moments) is one array per kind, sized for the parameters this rank
 * updates: all of them, or under ZeRO-1 only its shard, which may be several
 * slices of the flat buffer laid end to end in the state arrays. */
#ifndef DDP_OPTIM_H
#define DDP_OPTIM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { OPTIM_SGD, OPTIM_ADAMW } optim_kind_t;
typedef enum { SCHED_CONSTANT, SCHED_STEP, SCHED_COSINE } sched_kind_t;

typedef struct optim_cfg {
    optim_kind_t kind;
    float lr, momentum, weight_decay;
    int nesterov;
    float beta1, beta2, eps;
    sched_kind_t schedule;
    long warmup_steps; /* linear ramp from lr/warmup to lr, before any schedule */
    long step_every;   /* step schedule: multiply by gamma every this many steps */
    float gamma;
    float min_lr;      /* cosine floor */
} optim_cfg_t;

typedef struct optim {
    optim_cfg_t cfg;
    int dev;         /* device_t of the buffers and state */
    size_t n;        /* parameters covered by the state */
    float *m, *v;    /* momentum / Adam moments, n each (or NULL) */
    long t;          /* optimiser steps done (Adam's bias correction) */
} optim_t;

/* Allocates zeroed state for n parameters; returns 0 or -1 (out of memory).
 * optim_init_on keeps the state on a device (then params and grads passed
 * to the updates live there too). */
int optim_init(optim_t *o, const optim_cfg_t *cfg, size_t n);
int optim_init_on(optim_t *o, const optim_cfg_t *cfg, size_t n, int dev);
void optim_free(optim_t *o);
/* State arrays per parameter: 0 (plain SGD), 1 (momentum) or 2 (Adam). */
int optim_state_arrays(const optim_t *o);
/* The k-th state array (k < optim_state_arrays), n floats. */
float *optim_state(const optim_t *o, int k);

/* Starts an optimiser step (advances t); then optim_update for each slice. */
void optim_begin(optim_t *o);
/* Updates params[lo, hi) from grads[lo, hi) (full-buffer pointers) with
 * state entries [state_at, state_at + hi - lo). */
void optim_update(optim_t *o, float *params, const float *grads, size_t lo, size_t hi, size_t state_at, float lr);
/* optim_begin + optim_update over all n parameters. */
void optim_step(optim_t *o, float *params, const float *grads, float lr);

/* Learning rate for update number `step` (0-based) of `total`. */
float optim_lr(const optim_cfg_t *c, long step, long total);

#endif
