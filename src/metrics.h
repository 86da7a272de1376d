/* Run metrics: a JSON-lines file (one object per line, flushed as written)
 * and the human progress display (a live line on a terminal, plain periodic
 * lines otherwise). Only rank 0 writes either. */
#ifndef DDP_METRICS_H
#define DDP_METRICS_H

#include <stdio.h>

#include "straggler.h"

typedef struct metrics {
    FILE *f;          /* JSON lines, or NULL */
    int live;         /* rewrite one line on stderr */
    int plain;        /* periodic plain lines on stderr */
    double last_print;
    double t_start;   /* wall clock at start of training */
} metrics_t;

/* path may be "" (no file); progress is CFG_PROGRESS_*; append continues an
 * existing file (a resumed run). -1 if path cannot be opened. */
int metrics_open(metrics_t *m, const char *path, int progress, int append, char *err, size_t errlen);
void metrics_close(metrics_t *m);

typedef struct step_record {
    long step;        /* optimiser updates done */
    int epoch;        /* 1-based */
    double loss, step_ms, lr;
    double compute_ms, comm_ms, exposed_comm_ms; /* < 0: not written */
    double wire_bytes;  /* bytes this rank sent in the step; written with the timing */
    double compress_ms; /* time in gradient compression; < 0: not written */
    const straggler_t *straggler; /* the steps since the last record (straggler.h); NULL: not written */
} step_record_t;

void metrics_step(metrics_t *m, const step_record_t *r);

/* log.profile: one "profile_layer" record per graph node, in backward's
 * order (its gradients' flat range [lo, hi), hi = 0 without parameters),
 * then one "profile" record for the step; times are means per step over
 * the steps after the warm-up (launch/predict reads them). */
typedef struct profile_layer {
    int node;
    const char *kind;
    double forward_ms, backward_ms;
    size_t lo, hi;
} profile_layer_t;
typedef struct profile_record {
    long steps;
    int batch, ranks;
    size_t params;
    double forward_ms, backward_ms, optimizer_ms, data_ms, step_ms;
} profile_record_t;
void metrics_profile(metrics_t *m, const profile_layer_t *layers, int n, const profile_record_t *r);
/* bytes: the model predicts bytes (a text): also val_loss and bits_per_byte */
void metrics_eval(metrics_t *m, int epoch, double acc, double loss, int bytes);

typedef struct done_record {
    int ranks;
    long steps;
    double median_step_ms, samples_per_s, test_acc /* < 0: null */, wall_s;
    double compute_ms, comm_ms, exposed_comm_ms; /* medians; < 0: not written */
    double wire_bytes, compress_ms;              /* medians, as in step_record_t */
    const char *compress;                        /* [ddp] compress, or NULL */
    const char *sync; /* how gradients were averaged: "fused" or "collectives"; NULL: one rank */
    const long *named; /* [rank * 3 + cause]: steps each rank was named a straggler; NULL: not written */
} done_record_t;
void metrics_done(metrics_t *m, const done_record_t *r);

/* The progress display after a step. */
void metrics_progress(metrics_t *m, int epoch, int epochs, long step, long total, double loss,
                      double samples_per_s);
/* Ends a live line so the next output starts clean. */
void metrics_progress_end(metrics_t *m);

/* Monotonic wall clock in seconds. */
double now_s(void);

#endif
