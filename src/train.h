/* One worker's training job: data, graph, optimiser, loop, evaluation and
 * metrics, driven by a config. */
#ifndef DDP_TRAIN_H
#define DDP_TRAIN_H

#include <stdint.h>

#include "config.h"
#include "data.h"
#include "graph.h"
#include "metrics.h"
#include "optim.h"

typedef struct trainer {
    config_t cfg;
    int rank, ranks;
    dataset_t train, test;
    graph_t *g;
    optim_cfg_t ocfg;
    optim_t opt;
    uint32_t *perm;        /* this epoch's sample order */
    long steps_per_epoch;  /* full batches per epoch; the remainder is dropped */
    long total_steps;
    double *step_ms;       /* per-step wall time, preallocated */
    metrics_t m;
    double last_acc;       /* -1 until an evaluation ran */
    double t_begin;        /* wall clock at trainer_init (done.wall_s counts from here) */
} trainer_t;

/* Loads data, builds the model and optimiser. 0, or -1 with err. */
int trainer_init(trainer_t *t, const config_t *cfg, int rank, int ranks, char *err, size_t errlen);
/* Trains to the end, writing metrics; returns 0 or -1 with err. */
int trainer_run(trainer_t *t, char *err, size_t errlen);
/* Mean loss and accuracy over the whole test set. */
void trainer_evaluate(trainer_t *t, double *acc, double *loss);
void trainer_free(trainer_t *t);

#endif
