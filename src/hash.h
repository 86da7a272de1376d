/* FNV-1a, 64 bit: cheap fingerprints for comparing configurations,
 * checkpoints' model text and parameter buffers across ranks (not crypto). */
#ifndef DDP_HASH_H
#define DDP_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t fnv1a(const void *data, size_t n) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

#endif
