/* The job configuration: INI files (libinih) plus "section.key=value"
 * overrides from the command line. Every key is declared once in a table
 * (config.c) with its type, range and default; unknown sections or keys and
 * bad values are errors naming file:line (or the override) and the key. */
#ifndef DDP_CONFIG_H
#define DDP_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#define CFG_LIST_MAX 16
#define CFG_STR_MAX 1024
#define CFG_KEYS_MAX 64

typedef struct config {
    /* [model] */
    int arch;                   /* CFG_ARCH_* */
    int hidden[CFG_LIST_MAX];
    int nhidden;
    char layers[CFG_STR_MAX];
    int activation;             /* CFG_ACT_* */
    int n_layer, n_head, n_embd, block_size, tie_embeddings; /* arch = gpt */
    double dropout;             /* arch = gpt */
    /* [data] */
    int dataset;                /* CFG_DATA_* */
    char dir[CFG_STR_MAX];
    int batch_size;
    int shape[CFG_LIST_MAX];    /* synthetic: C,H,W (or fewer: features) */
    int nshape;
    int classes;
    int train_size, test_size;
    char path[CFG_STR_MAX];     /* dataset = text: the file */
    double val_fraction;        /* dataset = text: its last part, for validation */
    /* [optim] */
    int optim;                  /* CFG_OPTIM_* */
    double lr, momentum, weight_decay, beta1, beta2, eps, gamma, min_lr;
    int nesterov;
    int schedule;               /* CFG_SCHED_* */
    long warmup_steps, step_every;
    /* [train] */
    int epochs;
    long max_steps;
    long seed;
    int eval_every;
    int device;                 /* CFG_DEVICE_* */
    char gpu[CFG_STR_MAX];      /* "auto" or an index; see gpu_index */
    int gpu_index;              /* -1 for auto (set by config_validate) */
    int tf32;
    /* [log] */
    char metrics[CFG_STR_MAX];
    long every_steps;
    int progress;               /* CFG_PROGRESS_* */
    char params_out[CFG_STR_MAX]; /* final parameters, raw float32 */
    char trace_dir[CFG_STR_MAX];  /* libcoll's flight recorder dumps (COLL_TRACE_DIR) */
    int profile;                  /* per-layer, optimiser and data times into the metrics (launch/predict) */
    /* [ddp] */
    double bucket_mb;
    int overlap;
    int accumulate;
    int zero;
    int fused_update; /* 0 auto, 1 on, 2 off: zero = 0 on one node averages gradients read in place (ddp.h) */
    int algorithm;              /* coll_algo_t order: auto|ring|rd|native */
    double timeout_s;
    int compress;               /* CFG_COMPRESS_* (ddp_compress_t order) */
    int powersgd_rank;
    long powersgd_start;
    /* [checkpoint] */
    char ckpt_dir[CFG_STR_MAX];
    long ckpt_every;
    int resume;                 /* CFG_RESUME_* */
    /* where each key was last set ("file:line", "override '...'"), for
     * messages about combinations of keys; "" for defaults */
    char origin[CFG_KEYS_MAX][128];
} config_t;

enum { CFG_ARCH_MLP, CFG_ARCH_CNN, CFG_ARCH_LAYERS, CFG_ARCH_GPT };
enum { CFG_ACT_RELU, CFG_ACT_GELU, CFG_ACT_TANH };
enum { CFG_DATA_FMNIST, CFG_DATA_SYNTHETIC, CFG_DATA_TEXT };
enum { CFG_OPTIM_SGD, CFG_OPTIM_ADAMW };
enum { CFG_SCHED_CONSTANT, CFG_SCHED_STEP, CFG_SCHED_COSINE };
enum { CFG_PROGRESS_AUTO, CFG_PROGRESS_ON, CFG_PROGRESS_OFF };
enum { CFG_RESUME_AUTO, CFG_RESUME_NEVER };
enum { CFG_DEVICE_CPU, CFG_DEVICE_CUDA };
enum { CFG_COMPRESS_NONE, CFG_COMPRESS_BF16, CFG_COMPRESS_FP16, CFG_COMPRESS_POWERSGD };

/* Defaults for every key. */
void config_defaults(config_t *c);

/* Reads path over the current values. 0, or -1 with "path:line: ..." in err. */
int config_load(config_t *c, const char *path, char *err, size_t errlen);

/* The same from an open stream; path names it in messages. */
int config_load_file(config_t *c, FILE *f, const char *path, char *err, size_t errlen);

/* Applies "section.key=value". 0, or -1 with "override '...': ..." in err. */
int config_override(config_t *c, const char *arg, char *err, size_t errlen);

/* Checks that need several keys (run after all loads and overrides); also
 * derives gpu_index. */
int config_validate(config_t *c, char *err, size_t errlen);

/* The effective configuration as INI text (every key, canonical form);
 * `model_only` restricts it to what shapes the parameters. */
void config_write(const config_t *c, FILE *f, int model_only);

#endif
