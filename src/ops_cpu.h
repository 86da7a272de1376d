/* Shared by the CPU op files: parameter access and the sequence ops'
 * entry points for ops_cpu.c's table. */
#ifndef DDP_OPS_CPU_H
#define DDP_OPS_CPU_H

#include "ops.h"

#define W_OF(g, nd) ((g)->params + (g)->param[(nd)->param[0]].offset)
#define B_OF(g, nd) ((g)->params + (g)->param[(nd)->param[1]].offset)
#define DW_OF(g, nd) ((g)->grads + (g)->param[(nd)->param[0]].offset)
#define DB_OF(g, nd) ((g)->grads + (g)->param[(nd)->param[1]].offset)

/* x = e^(x - shift) element-wise (fastmath.h); returns their sum. */
/* OpenBLAS's threads: the compute threads of this rank */
int ops_cpu_threads(void);
float exp_shifted(float *restrict x, int n, float shift);

/* Sums the rows of an n x N matrix into acc (overwritten unless add). */
void column_sums(const float *restrict m, int n, int N, float *restrict acc, int add);

/* ops_conv.c: direct convolution at stride 1 (forward, weight and input
 * gradients) where the output channels (input channels for the input
 * gradient) are a multiple of 16 and the CPU has AVX2 and FMA;
 * conv_direct_usable(those channels, ...) says so. ops_conv_direct = 0 turns
 * it off (tests compare the two). Scratch: conv_direct_scratch floats (ops.h). */
extern int ops_conv_direct;
int conv_direct_usable(int cout, int K, int S, int P);
void conv_direct_forward(const float *x, int n, int C, int H, int W, const float *w, const float *bias, int OC, int K,
                         int P, float *y, float *scratch);
/* dw (+)= the weight gradient over n samples (add: accumulate into dw) */
void conv_direct_dweight(const float *x, const float *dy, int n, int C, int H, int W, int OC, int K, int P, float *dw,
                         int add, float *scratch);
void conv_direct_dinput(const float *dy, int n, int C, int H, int W, const float *w, int OC, int K, int P, float *dx,
                        float *scratch);

/* ops_seq.c */
void embed_forward(graph_t *g, node_t *nd, const tensor_t *in);
void embed_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din);
void pos_embed_forward(graph_t *g, node_t *nd, const tensor_t *in);
void pos_embed_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din);
void layernorm_forward(graph_t *g, node_t *nd, const tensor_t *in);
void layernorm_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din);
void attention_forward(graph_t *g, node_t *nd, const tensor_t *in);
void attention_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din);
void matmul_forward(graph_t *g, node_t *nd, const tensor_t *in);
void matmul_backward(graph_t *g, node_t *nd, const tensor_t *in, tensor_t *din);

#endif
