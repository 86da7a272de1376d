/* Optimisers and learning-rate schedules on the flat buffers. An update
 * covers a range [lo, hi) of the parameters, so ZeRO shards and full
 * replicas run the same loop; optimiser state is sized for that range. */
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
    size_t lo, hi;   /* the range of parameters this optimiser updates */
    float *m, *v;    /* state for [lo, hi): momentum / Adam moments */
    long t;          /* updates done (Adam's bias correction) */
} optim_t;

/* Allocates zeroed state for [lo, hi); returns 0 or -1 (out of memory). */
int optim_init(optim_t *o, const optim_cfg_t *cfg, size_t lo, size_t hi);
void optim_free(optim_t *o);
/* Floats of state per parameter (checkpoints save 0, 1 or 2 arrays). */
int optim_state_arrays(const optim_t *o);

/* One update of params[lo, hi) from grads[lo, hi) (full-buffer pointers). */
void optim_step(optim_t *o, float *params, const float *grads, float lr);

/* Learning rate for update number `step` (0-based) of `total`. */
float optim_lr(const optim_cfg_t *c, long step, long total);

#endif
