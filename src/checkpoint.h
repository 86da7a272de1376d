/* Checkpoints: one file per saved step, written by rank 0 to a temporary
 * name, fsynced, then renamed (so a crash mid-write leaves the previous one
 * intact); the last two are kept. A CRC32 covers the whole file, and the
 * model part of the config is stored as text, so a checkpoint from another
 * model is refused with the differing keys named. */
#ifndef DDP_CHECKPOINT_H
#define DDP_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

typedef struct ckpt_meta {
    long step;          /* optimiser steps done */
    long epoch;         /* sampler position: epoch (0-based) and global batch within it */
    long batch_in_epoch;
    long global_batch;  /* samples per step when written (ranks x batch x accumulate) */
    uint64_t seed;      /* the run's seed: data order and dropout streams derive from (seed, step) */
    long optim_t;       /* optimiser's own step counter */
    int state_arrays;   /* optimiser state arrays saved (0, 1, 2) */
    int extra_arrays;   /* more arrays of nweights floats (the gradient compression's state); in
                           ckpt_load: how many the caller can take in, then how many the file has */
    size_t nweights;
} ckpt_meta_t;

/* Writes dir/ckpt-STEP.bin (creating dir and its parents) from params
 * (nweights floats), the state arrays and the extra arrays (nweights floats
 * each, flat layout), then deletes all but the newest two and any temporary file left
 * by a write that was killed. The header is 96 little-endian bytes
 * (checkpoint.c). */
int ckpt_save(const char *dir, const ckpt_meta_t *m, const char *model_text, const float *params,
              const float *const *state, const float *const *extra, char *err, size_t errlen);

/* Finds the newest loadable checkpoint in dir. Returns 1 and fills path,
 * 0 when there is none, -1 on error (err). */
int ckpt_find(const char *dir, char *path, size_t len, char *err, size_t errlen);

/* Loads path. The stored model text must equal model_text, and nweights and
 * state_arrays must match m's; otherwise -1 with the reason. On success m's
 * step, seed, optim_t and extra_arrays are filled, params and state written,
 * and the first (m->extra_arrays on entry) extra arrays the file has. */
int ckpt_load(const char *path, ckpt_meta_t *m, const char *model_text, float *params, float *const *state,
              float *const *extra, char *err, size_t errlen);

#endif
