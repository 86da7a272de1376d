/* Hot element-wise loops get AVX-512, AVX2 and baseline versions chosen at
 * load time, so one binary runs everywhere and uses what the CPU has (the
 * default x86-64 target stops at SSE2). */
#ifndef DDP_SIMD_H
#define DDP_SIMD_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define HOT_LOOP __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT_LOOP
#endif

#endif
