/* Seeded random numbers: xoshiro256** seeded through splitmix64. Every use
 * derives its stream from (seed, purpose, index...) so results depend only on
 * the configuration, never on call history; resumed runs need no RNG state
 * beyond the step counter. */
#ifndef DDP_RNG_H
#define DDP_RNG_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define RNG_HD __host__ __device__
#else
#define RNG_HD
#endif

typedef struct rng { uint64_t s[4]; } rng_t;

/* Counter-based: element i of the stream keyed by `key`, uniform in [0, 1)
 * with 24 bits. Any element costs the same, in any order, so the CPU and a
 * GPU kernel draw the same dropout masks (ops_cpu.c, ops_cuda.cu). */
static inline RNG_HD float rng_hash_uniform(uint64_t key, uint64_t i) {
    uint64_t z = key + (i + 1) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

/* The key of a dropout node's mask at one step on one rank. */
static inline RNG_HD uint64_t rng_dropout_key(uint64_t seed, uint64_t step, uint64_t node, uint64_t rank) {
    uint64_t x = seed ^ 0x64726f706f7574ULL ^ (step * 0xd1342543de82ef95ULL) ^ (((node << 32) | rank) * 0x632be59bd9b4e019ULL);
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static inline uint64_t rng_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A stream for (seed, a, b): distinct tuples give independent streams. */
static inline void rng_seed(rng_t *r, uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t x = seed ^ (a * 0xd1342543de82ef95ULL) ^ (b * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL);
    for (int i = 0; i < 4; i++) r->s[i] = rng_splitmix(&x);
}

static inline uint64_t rng_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng_t *r) {
    uint64_t *s = r->s;
    uint64_t res = rng_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rng_rotl(s[3], 45);
    return res;
}

/* Uniform in [0, 1) with 24 random bits. */
static inline float rng_uniform(rng_t *r) { return (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f); }

/* Uniform integer in [0, n), unbiased. */
static inline uint64_t rng_below(rng_t *r, uint64_t n) {
    uint64_t lim = -n % n, x;
    do x = rng_next(r); while (x < lim);
    return x % n;
}

static inline float rng_normal(rng_t *r) {
    double u1 = ((double)(rng_next(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

#endif
