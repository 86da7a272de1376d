/* Layer specifications: what a model is made of, before any memory exists.
 * Models come from the config as a list of these, either from a named
 * architecture (mlp, cnn) or from the compact layer-list syntax:
 *
 *   conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten
 *   linear(1024) relu dropout(0.4) linear(10)
 *
 * conv(C,K[,stride[,pad]])  C output channels, KxK kernel; pad defaults to K/2
 *                           ("same" for odd K at stride 1)
 * maxpool(K[,stride])       stride defaults to K
 * linear(N)                 N outputs; flattens its input
 * dropout(P)                drops with probability P in training
 * relu gelu tanh flatten    no arguments
 * residual(LAYERS)          LAYERS applied to the input, then the input added
 *                           back (the block must keep the input's size);
 *                           blocks nest
 *
 * The softmax cross-entropy loss is appended by the graph, not written. */
#ifndef DDP_LAYERS_H
#define DDP_LAYERS_H

#include <stddef.h>

typedef enum {
    OP_LINEAR,
    OP_RELU,
    OP_GELU,
    OP_TANH,
    OP_DROPOUT,
    OP_CONV2D,
    OP_MAXPOOL,
    OP_FLATTEN,
    OP_SOFTMAX_CE,
    OP_ADD, /* element-wise sum of two inputs of the same size (residuals) */
    /* sequence models: activations [batch, T, C], a linear layer on a 3-D
     * input acts on the last dimension */
    OP_EMBED,     /* token ids [T] (as floats) -> [T, n]; weight [k or classes, n] */
    OP_POS_EMBED, /* [T, C] + a learned [T, C] */
    OP_LAYERNORM, /* over the last dimension; weight (1) and bias (0) per channel */
    OP_ATTENTION, /* causal self-attention, n heads: q,k,v [T, 3C] -> [T, C] */
    OP_MATMUL,    /* batched: a [M, K] x b [K, N] -> [M, N] per sample (b transposed when k = 1) */
    OP_COUNT
} op_kind_t;

typedef struct layer_spec {
    op_kind_t kind;
    int n;      /* linear outputs, conv output channels, embedding width, attention heads */
    int k;      /* conv or pool kernel size, embedding vocabulary (0: the classes) */
    int stride; /* conv or pool stride */
    int pad;    /* conv zero padding on each side */
    float p;    /* dropout probability */
    /* Where the inputs come from: nsrc 0 reads the previous layer's output
     * (the model's input for the first layer); otherwise src[0..nsrc) are
     * the producing layers' indices, each before this one, -1 for the
     * model's input. Any output may feed several layers. */
    int nsrc;
    int src[2];
    /* 0, or 1 + the index of an earlier layer whose weight this one uses
     * (same shape; weight tying); the bias stays its own */
    int tie;
    int nobias;     /* linear: no bias */
    float init_std; /* weights ~ N(0, init_std) (GPT-2's 0.02); 0: PyTorch's default */
} layer_spec_t;

#define LAYERS_MAX 256

const char *layers_op_name(op_kind_t kind);

/* Parses the layer-list syntax; returns the number of layers, or -1 with a
 * message naming the offending token in err. */
int layers_parse(const char *text, layer_spec_t *out, int max, char *err, size_t errlen);

/* The MLP: linear(h) act for each hidden width, then linear(classes). */
int layers_mlp(const int *hidden, int nhidden, int classes, op_kind_t act, layer_spec_t *out, int max);

/* The "2 Conv+pooling" CNN of the TensorFlow layers tutorial. */
int layers_cnn(int classes, layer_spec_t *out, int max);

/* GPT-2's layout for a vocabulary of `vocab` tokens: token + positional
 * embedding; per block pre-LayerNorm, attention (q, k, v from one linear
 * layer) with an output projection, residual, pre-LayerNorm, an MLP of
 * 4 x n_embd with GELU, residual; a final LayerNorm; a bias-free linear
 * head, its weight the token embedding's when tie. Weights ~ N(0, 0.02), the
 * residual projections N(0, 0.02 / sqrt(2 n_layer)), biases 0. dropout > 0
 * adds GPT-2's dropouts: after the embeddings and on each residual branch
 * before its add (not on the attention probabilities). Returns the number
 * of layers, or -1 (n_embd not a multiple of n_head, too many). */
int layers_gpt(int n_layer, int n_head, int n_embd, int vocab, int tie, float dropout, layer_spec_t *out, int max);

/* Writes the canonical layer-list text (used in logs and config hashes). */
void layers_format(const layer_spec_t *l, int n, char *buf, size_t len);

#endif
