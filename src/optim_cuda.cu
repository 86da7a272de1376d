// The optimisers as fused kernels over the flat device buffers: the same
// arithmetic as optim.c's loops, one pass over parameters, gradients and state.
#include <cuda_runtime.h>

extern "C" {
#include "device_cuda.h"
#include "optim.h"
}

#define GRID_STRIDE(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

__global__ void k_sgd(float *p, const float *g, float *v, size_t n, float lr, float mu, float wd, int nesterov) {
    GRID_STRIDE(i, n) {
        const float d = g[i] + wd * p[i];
        if (!v) {
            p[i] -= lr * d;
        } else if (nesterov) {
            v[i] = mu * v[i] + d;
            p[i] -= lr * (d + mu * v[i]);
        } else {
            v[i] = mu * v[i] + d;
            p[i] -= lr * v[i];
        }
    }
}

__global__ void k_adamw(float *p, const float *g, float *m, float *v, size_t n, float b1, float b2, float eps,
                        float step, float rbc2, float decay) {
    GRID_STRIDE(i, n) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        p[i] = p[i] * decay - step * m[i] / (sqrtf(v[i]) * rbc2 + eps);
    }
}

extern "C" void optim_cuda_update(const struct optim *o, float *p, const float *g, float *m, float *v, size_t n, float lr) {
    if (!n) return;
    const cudaStream_t s = (cudaStream_t)cuda_stream();
    size_t b = (n + 255) / 256;
    const unsigned grid = (unsigned)(b < 65535u * 8 ? b : 65535u * 8);
    const optim_cfg_t *c = &o->cfg;
    if (c->kind == OPTIM_ADAMW) {
        const float bc1 = 1.0f - powf(c->beta1, (float)o->t), bc2 = 1.0f - powf(c->beta2, (float)o->t);
        k_adamw<<<grid, 256, 0, s>>>(p, g, m, v, n, c->beta1, c->beta2, c->eps, lr / bc1, 1.0f / sqrtf(bc2),
                                     1.0f - lr * c->weight_decay);
    } else {
        k_sgd<<<grid, 256, 0, s>>>(p, g, m, n, lr, c->momentum, c->weight_decay, c->nesterov);
    }
}
