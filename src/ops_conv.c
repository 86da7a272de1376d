/* Direct convolution at stride 1 on the CPU, forward and input gradient.
 *
 * im2col + sgemm writes every input value K*K times into a column matrix,
 * which OpenBLAS then packs once more; on the tutorial CNN those copies and
 * the product's rearrangement into NCHW cost about as much as PyTorch's whole
 * lead. Here the product reads the (zero-padded) input in place: output
 * position p = (oh, ow) and reduction index k = (c, ki, kj) meet at
 * xpad[c][oh + ki][ow + kj] = base(p)[off(k)], so a tile of NPX positions x
 * NOC output channels keeps 6 x 2 AVX accumulators and, per k, broadcasts one
 * input value per position against two vectors of packed weights (the
 * register shape of a 6x16 sgemm kernel; no packing of the input at all).
 *
 * The input gradient is the same product: dX = the full correlation of dY
 * (padded by K-1-P) with the weights flipped in both spatial axes and their
 * channel axes swapped.
 *
 * And the weight gradient too, with the roles turned: dW[oc][k] = sum over
 * samples s and positions p of xpad_s[off(k) + base(p)] dY_s[oc][p], so a
 * tile is NPX reduction indices k (base[j] = xpad + off(k_j)) x NOC output
 * channels, the loop runs over the positions of a few samples at once (their
 * padded inputs side by side, dY transposed to [position][channel]), and
 * each group of samples adds its tiles into dW. */
#include <string.h>

#include "ops_cpu.h"

#define NPX 6  /* output positions per tile */
#define NOC 16 /* output channels per tile: two vectors of 8 */

int ops_conv_direct = 1;

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

static int cpu_ok(void) {
    static int ok = -1; /* a benign race: every thread computes the same */
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return ok;
}

/* acc[j][0..15] = sum_k base[j][off[k]] * w[k][0..15] */
__attribute__((target("avx2,fma"))) static void tile(const float *const *base, const int *off, int nk,
                                                     const float *w, float out[NPX][NOC]) {
    const float *b0 = base[0], *b1 = base[1], *b2 = base[2], *b3 = base[3], *b4 = base[4], *b5 = base[5];
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m256 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    for (int k = 0; k < nk; k++, w += NOC) {
        const int o = off[k];
        const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
        __m256 x = _mm256_broadcast_ss(b0 + o);
        a00 = _mm256_fmadd_ps(x, w0, a00), a01 = _mm256_fmadd_ps(x, w1, a01);
        x = _mm256_broadcast_ss(b1 + o);
        a10 = _mm256_fmadd_ps(x, w0, a10), a11 = _mm256_fmadd_ps(x, w1, a11);
        x = _mm256_broadcast_ss(b2 + o);
        a20 = _mm256_fmadd_ps(x, w0, a20), a21 = _mm256_fmadd_ps(x, w1, a21);
        x = _mm256_broadcast_ss(b3 + o);
        a30 = _mm256_fmadd_ps(x, w0, a30), a31 = _mm256_fmadd_ps(x, w1, a31);
        x = _mm256_broadcast_ss(b4 + o);
        a40 = _mm256_fmadd_ps(x, w0, a40), a41 = _mm256_fmadd_ps(x, w1, a41);
        x = _mm256_broadcast_ss(b5 + o);
        a50 = _mm256_fmadd_ps(x, w0, a50), a51 = _mm256_fmadd_ps(x, w1, a51);
    }
    _mm256_storeu_ps(out[0], a00), _mm256_storeu_ps(out[0] + 8, a01);
    _mm256_storeu_ps(out[1], a10), _mm256_storeu_ps(out[1] + 8, a11);
    _mm256_storeu_ps(out[2], a20), _mm256_storeu_ps(out[2] + 8, a21);
    _mm256_storeu_ps(out[3], a30), _mm256_storeu_ps(out[3] + 8, a31);
    _mm256_storeu_ps(out[4], a40), _mm256_storeu_ps(out[4] + 8, a41);
    _mm256_storeu_ps(out[5], a50), _mm256_storeu_ps(out[5] + 8, a51);
}
#else
static int cpu_ok(void) { return 0; }
static void tile(const float *const *base, const int *off, int nk, const float *w, float out[NPX][NOC]) {
    (void)base, (void)off, (void)nk, (void)w, (void)out;
}
#endif

int conv_direct_usable(int cout, int K, int S, int P) {
    return ops_conv_direct && cpu_ok() && S == 1 && cout % NOC == 0 && P >= 0 && P <= K - 1;
}

/* Samples per weight-gradient group: their padded inputs and transposed dY
 * within about 384 KB, so they stay in L2 while every tile rereads them. */
static int dw_group(int C, int H, int W, int OC, int K, int P, int n) {
    const int OH = H + 2 * P - K + 1, OW = W + 2 * P - K + 1;
    const size_t per = ((size_t)C * (H + 2 * P) * (W + 2 * P) + (size_t)OC * OH * OW) * sizeof(float);
    const size_t g = (384u << 10) / (per ? per : 1);
    return g < 1 ? 1 : g > (size_t)n ? n : (int)g;
}

/* Floats of scratch: for forward and the input gradient, the padded input
 * (the larger of x and dY), the packed weights and the offset table; for the
 * weight gradient, a group's padded inputs, transposed dY, position bases and
 * offsets; the larger of the two (they run one after the other). */
/* The padded planes of one sample: x padded by P, or dY by K-1-P (tiles
 * read up to the last plane's last element, never past it). */
static size_t planes_floats(int C, int H, int W, int OC, int K, int P) {
    const int OH = H + 2 * P - K + 1, OW = W + 2 * P - K + 1, Q = K - 1 - P;
    const size_t xp = (size_t)C * (H + 2 * P) * (W + 2 * P), dyp = (size_t)OC * (OH + 2 * Q) * (OW + 2 * Q);
    return xp > dyp ? xp : dyp;
}

size_t conv_direct_scratch(int C, int H, int W, int OC, int K, int P, int batch) {
    const int OH = H + 2 * P - K + 1, OW = W + 2 * P - K + 1, G = dw_group(C, H, W, OC, K, P, batch);
    const size_t fx = planes_floats(C, H, W, OC, K, P) + (size_t)C * OC * K * K + (size_t)(C > OC ? C : OC) * K * K;
    const size_t dw = (size_t)G * ((size_t)C * (H + 2 * P) * (W + 2 * P) + (size_t)OC * OH * OW + (size_t)OH * OW) +
                      (size_t)C * K * K;
    return fx > dw ? fx : dw;
}

/* xp[c][Q + h][Q + w] = x[c][h][w], zeros around it */
static void pad_planes(const float *restrict x, int C, int H, int W, int Q, float *restrict xp) {
    const int Hp = H + 2 * Q, Wp = W + 2 * Q;
    memset(xp, 0, (size_t)C * Hp * Wp * sizeof(float));
    for (int c = 0; c < C; c++)
        for (int h = 0; h < H; h++)
            memcpy(xp + ((size_t)c * Hp + Q + h) * Wp + Q, x + ((size_t)c * H + h) * W, (size_t)W * sizeof(float));
}

/* y[oc][p] (+ bias) = the correlation of xp [Cin][.][Wp] with packed
 * weights wp [Cout / NOC][Cin * K * K][NOC] at stride 1, OH x OW outputs. */
static void correlate(const float *xp, int Cin, int Wp, int K, const float *wp, const int *off, int Cout, int OH,
                      int OW, const float *bias, float *y) {
    const int nk = Cin * K * K, P = OH * OW;
    float acc[NPX][NOC];
    const float *base[NPX];
    for (int ob = 0; ob < Cout / NOC; ob++) {
        const float *wb = wp + (size_t)ob * nk * NOC;
        for (int p0 = 0; p0 < P; p0 += NPX) {
            const int np = P - p0 < NPX ? P - p0 : NPX;
            for (int j = 0; j < NPX; j++) { /* a short last tile repeats its first position */
                const int p = p0 + (j < np ? j : 0);
                base[j] = xp + (size_t)(p / OW) * Wp + p % OW;
            }
            tile(base, off, nk, wb, acc);
            for (int l = 0; l < NOC; l++) {
                const int oc = ob * NOC + l;
                const float b = bias ? bias[oc] : 0.0f;
                float *yo = y + (size_t)oc * P + p0;
                for (int j = 0; j < np; j++) yo[j] = acc[j][l] + b;
            }
        }
    }
}

static void offsets(int Cin, int Hp, int Wp, int K, int *off) {
    for (int c = 0, k = 0; c < Cin; c++)
        for (int ki = 0; ki < K; ki++)
            for (int kj = 0; kj < K; kj++) off[k++] = (c * Hp + ki) * Wp + kj;
}

/* Scratch layout: padded planes, packed weights, offsets. */
typedef struct {
    float *planes, *wp;
    int *off;
} direct_scratch_t;

static direct_scratch_t carve(float *s, int C, int H, int W, int OC, int K, int P) {
    direct_scratch_t d = {s, s + planes_floats(C, H, W, OC, K, P), NULL};
    d.off = (int *)(d.wp + (size_t)C * OC * K * K);
    return d;
}

void conv_direct_forward(const float *x, int n, int C, int H, int W, const float *w, const float *bias, int OC, int K,
                         int P, float *y, float *scratch) {
    const int Hp = H + 2 * P, Wp = W + 2 * P, OH = Hp - K + 1, OW = Wp - K + 1, nk = C * K * K;
    const direct_scratch_t d = carve(scratch, C, H, W, OC, K, P);
    for (int ob = 0; ob < OC / NOC; ob++) /* wp[ob][k][l] = w[ob*NOC + l][k] */
        for (int k = 0; k < nk; k++)
            for (int l = 0; l < NOC; l++) d.wp[((size_t)ob * nk + k) * NOC + l] = w[(size_t)(ob * NOC + l) * nk + k];
    offsets(C, Hp, Wp, K, d.off);
    for (int s = 0; s < n; s++) {
        pad_planes(x + (size_t)s * C * H * W, C, H, W, P, d.planes);
        correlate(d.planes, C, Wp, K, d.wp, d.off, OC, OH, OW, bias, y + (size_t)s * OC * OH * OW);
    }
}

void conv_direct_dinput(const float *dy, int n, int C, int H, int W, const float *w, int OC, int K, int P, float *dx,
                        float *scratch) {
    const int OH = H + 2 * P - K + 1, OW = W + 2 * P - K + 1, Q = K - 1 - P;
    const int Hp = OH + 2 * Q, Wp = OW + 2 * Q, nk = OC * K * K;
    const direct_scratch_t d = carve(scratch, C, H, W, OC, K, P);
    /* wp[cb][(oc, ki, kj)][l] = w[oc][cb*NOC + l][K-1-ki][K-1-kj] */
    for (int cb = 0; cb < C / NOC; cb++)
        for (int oc = 0; oc < OC; oc++)
            for (int ki = 0; ki < K; ki++)
                for (int kj = 0; kj < K; kj++) {
                    float *to = d.wp + ((size_t)cb * nk + (size_t)(oc * K + ki) * K + kj) * NOC;
                    for (int l = 0; l < NOC; l++)
                        to[l] = w[(((size_t)oc * C + cb * NOC + l) * K + (K - 1 - ki)) * K + (K - 1 - kj)];
                }
    offsets(OC, Hp, Wp, K, d.off);
    for (int s = 0; s < n; s++) {
        pad_planes(dy + (size_t)s * OC * OH * OW, OC, OH, OW, Q, d.planes);
        correlate(d.planes, OC, Wp, K, d.wp, d.off, C, H, W, NULL, dx + (size_t)s * C * H * W);
    }
}

void conv_direct_dweight(const float *x, const float *dy, int n, int C, int H, int W, int OC, int K, int P, float *dw,
                         int add, float *scratch) {
    const int Hp = H + 2 * P, Wp = W + 2 * P, OH = Hp - K + 1, OW = Wp - K + 1, nk = C * K * K, PP = OH * OW;
    const int G = dw_group(C, H, W, OC, K, P, n);
    const size_t plane = (size_t)C * Hp * Wp;
    float *xp = scratch, *dyt = xp + (size_t)G * plane;
    int *pb = (int *)(dyt + (size_t)G * OC * PP), *off = pb + (size_t)G * PP;
    offsets(C, Hp, Wp, K, off);
    float acc[NPX][NOC];
    const float *base[NPX];
    for (int s0 = 0; s0 < n; s0 += G) {
        const int m = n - s0 < G ? n - s0 : G, np = m * PP;
        for (int j = 0; j < m; j++) {
            pad_planes(x + (size_t)(s0 + j) * C * H * W, C, H, W, P, xp + (size_t)j * plane);
            for (int p = 0; p < PP; p++) pb[j * PP + p] = (int)((size_t)j * plane) + (p / OW) * Wp + p % OW;
            /* dyt[ob][j*PP + p][l] = dy[s0 + j][ob*NOC + l][p] */
            const float *d = dy + (size_t)(s0 + j) * OC * PP;
            for (int oc = 0; oc < OC; oc++) {
                float *t = dyt + ((size_t)(oc / NOC) * np + (size_t)j * PP) * NOC + oc % NOC;
                for (int p = 0; p < PP; p++) t[(size_t)p * NOC] = d[(size_t)oc * PP + p];
            }
        }
        const int first = s0 == 0 && !add;
        for (int ob = 0; ob < OC / NOC; ob++) {
            const float *wb = dyt + (size_t)ob * np * NOC;
            for (int k0 = 0; k0 < nk; k0 += NPX) {
                const int nj = nk - k0 < NPX ? nk - k0 : NPX;
                for (int j = 0; j < NPX; j++) base[j] = xp + off[k0 + (j < nj ? j : 0)];
                tile(base, pb, np, wb, acc);
                for (int l = 0; l < NOC; l++) {
                    float *to = dw + (size_t)(ob * NOC + l) * nk + k0;
                    if (first)
                        for (int j = 0; j < nj; j++) to[j] = acc[j][l];
                    else
                        for (int j = 0; j < nj; j++) to[j] += acc[j][l];
                }
            }
        }
    }
}
