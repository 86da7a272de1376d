/* One worker's training job: data, graph, optimiser, the data-parallel
 * engine, checkpoints, the loop, evaluation and metrics, driven by a config.
 *
 * Sampling: each epoch has one permutation of the training set, the same on
 * every rank (seeded by (seed, epoch)). Optimiser step s of an epoch uses
 * the global batch perm[s*G, (s+1)*G), G = ranks x batch_size x accumulate;
 * micro-batch k of rank r is its [(k*ranks + r)*batch_size, +batch_size)
 * part. So a run at P ranks sees exactly the samples, in the same groups, as
 * one rank with P times the batch. The remainder of an epoch (fewer than G
 * samples) is dropped; the next epoch's permutation covers them again. */
#ifndef DDP_TRAIN_H
#define DDP_TRAIN_H

#include <mpi.h>
#include <stdint.h>

#include "config.h"
#include "data.h"
#include "ddp.h"
#include "device.h"
#include "graph.h"
#include "metrics.h"
#include "optim.h"
#include "straggler.h"

typedef struct trainer {
    config_t cfg;
    int rank, ranks;
    dataset_t train, test;
    graph_t *g;
    ddp_t *ddp;            /* NULL at one rank without compression */
    optim_cfg_t ocfg;
    optim_t opt;
    uint64_t seed;         /* data order and dropout (from the checkpoint when resumed) */
    uint32_t *perm;        /* this epoch's sample order */
    long global_batch;     /* samples per optimiser step, all ranks */
    long steps_per_epoch;  /* full global batches per epoch */
    long total_steps;
    long step;             /* optimiser steps done (> 0 after a resume) */
    double *step_ms, *exposed_ms, *comm_ms, *wire_bytes, *compress_ms; /* per step, preallocated */
    float *ckpt_state;     /* ZeRO-1, rank 0: the full optimiser state, gathered for checkpoints */
    float *ckpt_extra;     /* PowerSGD, rank 0: its state for checkpoints, 1 + ranks arrays (train.c) */
    /* straggler attribution (straggler.h): this rank's probes since the last
     * step record, all ranks' gathered there, and how often each rank was named */
    int probe_cap, probe_n;
    double *probes, *probes_all, *hops;
    long *named;           /* rank 0: [rank * 3 + cause] */
    straggler_track_t track; /* rank 0: the previous window's verdict */
    device_t dev;          /* where the graph, parameters and optimiser state live */
    float *host_params;    /* GPU: host copy of the parameters (checkpoints, hashes, output) */
    float *host_state;     /* GPU: host copy of the optimiser state, as this rank holds it */
    char model_text[4096]; /* the model part of the config, for checkpoints */
    metrics_t m;
    double last_acc;       /* -1 until an evaluation ran */
    double logged_loss;    /* the last step record's global loss (NAN before one) */
    double t_begin;        /* wall clock at trainer_init (done.wall_s counts from here) */
    double prof_data_ms, prof_opt_ms; /* log.profile: summed since the warm-up */
    long prof_steps;
    int coll_failed;       /* a collective failed (a rank lost or silent): the failure is not agreed */
} trainer_t;

/* Loads data, builds the model, optimiser and (at several ranks) the
 * data-parallel engine; makes every replica equal to rank 0's; resumes from
 * a checkpoint when configured. 0, or -1 with err (every rank failed, or
 * the failure was agreed), or -2 with err when a collective failed, so the
 * others may be blocked (the caller should MPI_Abort). Collective over comm. */
int trainer_init(trainer_t *t, const config_t *cfg, MPI_Comm comm, char *err, size_t errlen);
/* Start-up agreement, collective over comm: returns 0 when no rank failed;
 * otherwise -1, with err naming the first failed rank on the others (a
 * failed rank keeps its own message). It has no timeout: the caller guards
 * the start-up against a rank that stops answering (liveness_guard). */
int trainer_agree(MPI_Comm comm, int failed, char *err, size_t errlen);
/* Trains to the end; observe.c writes the metrics around it. 0, or -1 with err. */
int trainer_run(trainer_t *t, char *err, size_t errlen);
/* Writes a checkpoint of step t->step (rank 0 writes, every rank takes part). */
int trainer_checkpoint(trainer_t *t, char *err, size_t errlen);
/* Mean loss and accuracy over the whole test set (split across ranks). */
int trainer_evaluate(trainer_t *t, double *acc, double *loss);
void trainer_free(trainer_t *t);
/* The parameters in host memory (nweights floats): the graph's own on the
 * CPU, a fresh copy from the device on a GPU. NULL when the copy failed. */
const float *trainer_params_host(trainer_t *t);

#endif
