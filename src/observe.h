/* What happens around each optimiser step, apart from training it: the
 * step's timings and straggler probes, the step record and the progress
 * line, checkpoints, the fault hook, evaluation; at the end the done record,
 * the profile, the summary line and the parameter file. train.c's loop only
 * trains and hands each step's result here, so a new model or device touches
 * neither file. */
#ifndef DDP_OBSERVE_H
#define DDP_OBSERVE_H

#include "train.h"

#define WARMUP_STEPS 20 /* medians and profiles leave out the first steps */

typedef struct step_result {
    long i;            /* steps done before it in this run (the arrays' index) */
    long epoch, b;     /* its epoch and batch within it */
    double ms;         /* wall time */
    float loss, lr;    /* this rank's mean loss (NAN on a GPU when not logged), the learning rate */
    ddp_stats_t st;    /* communication, exposed_ms already bounded by the loop */
} step_result_t;

/* After step t->step (already counted): 0, or -1 with err. */
int observe_step(trainer_t *t, const step_result_t *r, char *err, size_t errlen);
/* After the last step of a run that began at step `first`. */
int observe_finish(trainer_t *t, long first, char *err, size_t errlen);

#endif
