#include "layers.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const op_names[OP_COUNT] = {
    [OP_LINEAR] = "linear", [OP_RELU] = "relu",       [OP_GELU] = "gelu",
    [OP_TANH] = "tanh",     [OP_DROPOUT] = "dropout", [OP_CONV2D] = "conv",
    [OP_MAXPOOL] = "maxpool", [OP_FLATTEN] = "flatten", [OP_SOFTMAX_CE] = "softmax_ce",
    [OP_ADD] = "add", [OP_EMBED] = "embed", [OP_POS_EMBED] = "pos_embed", [OP_LAYERNORM] = "layernorm",
    [OP_ATTENTION] = "attention", [OP_MATMUL] = "matmul",
};

const char *layers_op_name(op_kind_t kind) { return kind < OP_COUNT ? op_names[kind] : "?"; }

/* Splits "a,b,c" into at most max numbers; returns the count or -1. */
static int parse_args(const char *s, double *v, int max) {
    int n = 0;
    while (*s) {
        if (n == max) return -1;
        char *end;
        errno = 0;
        v[n++] = strtod(s, &end);
        if (end == s || errno) return -1;
        while (isspace((unsigned char)*end)) end++;
        if (*end == ',') end++;
        else if (*end) return -1;
        s = end;
        while (isspace((unsigned char)*s)) s++;
    }
    return n;
}

/* the range first: converting an out-of-range double to int is undefined (found by tests/fuzz) */
static int is_int(double v, int lo, int hi) { return v >= lo && v <= hi && v == (int)v; }

#define NEST_MAX 16 /* residual blocks inside residual blocks */

/* The closing parenthesis matching the one at open, or NULL. */
static const char *matching(const char *open) {
    int depth = 0;
    for (const char *s = open; *s; s++)
        if (*s == '(') depth++;
        else if (*s == ')' && --depth == 0) return s;
    return NULL;
}

/* Appends the layers of text to out[*n ..]; returns 0 or -1 with err. */
static int parse_seq(const char *text, int depth, layer_spec_t *out, int *n, int max, char *err, size_t errlen) {
    const char *s = text;
    for (;;) {
        while (isspace((unsigned char)*s)) s++;
        if (!*s) return 0;
        const char *t0 = s;
        while (isalnum((unsigned char)*s) || *s == '_') s++;
        char name[32] = "";
        snprintf(name, sizeof name, "%.*s", (int)(s - t0), t0);
        double a[4];
        int na = 0;
        char args[128] = "";
        const char *inner = NULL, *close = NULL;
        if (*s == '(') {
            if (!(close = matching(s))) {
                snprintf(err, errlen, "layer '%s': missing ')'", name);
                return -1;
            }
            inner = s + 1;
            snprintf(args, sizeof args, "%.*s", (int)(close - s - 1), s + 1);
            s = close + 1;
            if (strcmp(name, "residual")) na = parse_args(args, a, 4);
        }
        if (!*name || (*s && !isspace((unsigned char)*s))) {
            snprintf(err, errlen, "unexpected text at '%.20s'", t0);
            return -1;
        }
        if (*n == max) {
            snprintf(err, errlen, "more than %d layers", max);
            return -1;
        }
        if (!strcmp(name, "residual")) {
            if (!inner) {
                snprintf(err, errlen, "residual needs its layers: residual(LAYERS)");
                return -1;
            }
            if (depth == NEST_MAX) {
                snprintf(err, errlen, "residual blocks nested deeper than %d", NEST_MAX);
                return -1;
            }
            char *body = strndup(inner, (size_t)(close - inner));
            if (!body) return snprintf(err, errlen, "out of memory"), -1;
            const int from = *n - 1; /* the block's input: the previous layer, -1 the model's input */
            const int rc = parse_seq(body, depth + 1, out, n, max, err, errlen);
            free(body);
            if (rc) return -1;
            if (*n == from + 1) {
                snprintf(err, errlen, "residual() needs at least one layer");
                return -1;
            }
            if (*n == max) {
                snprintf(err, errlen, "more than %d layers", max);
                return -1;
            }
            out[*n] = (layer_spec_t){.kind = OP_ADD, .nsrc = 2, .src = {*n - 1, from}};
            (*n)++;
            continue;
        }
        layer_spec_t l = {0};
        const char *want = NULL;
        if (!strcmp(name, "linear")) {
            l.kind = OP_LINEAR;
            if (na != 1 || !is_int(a[0], 1, 1 << 24)) want = "linear(N) with N >= 1";
            else l.n = (int)a[0];
        } else if (!strcmp(name, "conv")) {
            l.kind = OP_CONV2D;
            if (na < 2 || !is_int(a[0], 1, 1 << 16) || !is_int(a[1], 1, 64) ||
                (na > 2 && !is_int(a[2], 1, 64)) || (na > 3 && !is_int(a[3], 0, 64)))
                want = "conv(C,K[,stride[,pad]]) with C, K, stride >= 1 and pad >= 0";
            else {
                l.n = (int)a[0];
                l.k = (int)a[1];
                l.stride = na > 2 ? (int)a[2] : 1;
                l.pad = na > 3 ? (int)a[3] : l.k / 2;
            }
        } else if (!strcmp(name, "maxpool")) {
            l.kind = OP_MAXPOOL;
            if (na < 1 || na > 2 || !is_int(a[0], 1, 64) || (na > 1 && !is_int(a[1], 1, 64)))
                want = "maxpool(K[,stride]) with K, stride >= 1";
            else {
                l.k = (int)a[0];
                l.stride = na > 1 ? (int)a[1] : l.k;
            }
        } else if (!strcmp(name, "dropout")) {
            l.kind = OP_DROPOUT;
            if (na != 1 || !(a[0] >= 0 && a[0] < 1)) want = "dropout(P) with 0 <= P < 1";
            else l.p = (float)a[0];
        } else if (!strcmp(name, "relu") || !strcmp(name, "gelu") || !strcmp(name, "tanh") ||
                   !strcmp(name, "flatten")) {
            l.kind = name[0] == 'r' ? OP_RELU : name[0] == 'g' ? OP_GELU : name[0] == 't' ? OP_TANH : OP_FLATTEN;
            if (*args || na) want = "no arguments";
        } else {
            snprintf(err, errlen,
                     "unknown layer '%s' (expected linear, conv, maxpool, dropout, relu, gelu, tanh, flatten, residual)", name);
            return -1;
        }
        if (want || na < 0) {
            snprintf(err, errlen, "layer '%s(%s)': expected %s", name, args, want ? want : "numbers");
            return -1;
        }
        out[(*n)++] = l;
    }
}

int layers_parse(const char *text, layer_spec_t *out, int max, char *err, size_t errlen) {
    int n = 0;
    if (parse_seq(text, 0, out, &n, max, err, errlen)) return -1;
    if (n == 0) snprintf(err, errlen, "no layers");
    return n ? n : -1;
}

int layers_mlp(const int *hidden, int nhidden, int classes, op_kind_t act, layer_spec_t *out, int max) {
    int n = 0;
    if (2 * nhidden + 1 > max) return -1;
    for (int i = 0; i < nhidden; i++) {
        out[n++] = (layer_spec_t){.kind = OP_LINEAR, .n = hidden[i]};
        out[n++] = (layer_spec_t){.kind = act};
    }
    out[n++] = (layer_spec_t){.kind = OP_LINEAR, .n = classes};
    return n;
}

int layers_gpt(int n_layer, int n_head, int n_embd, int vocab, int tie, float dropout, layer_spec_t *out, int max) {
    const int C = n_embd, drop = dropout > 0.0f;
    if (n_layer < 1 || n_head < 1 || C % n_head || vocab < 2 || 3 + (10 + 2 * drop) * n_layer + 2 > max) return -1;
    const float std = 0.02f, proj = std / sqrtf(2.0f * (float)n_layer);
    const layer_spec_t dr = {.kind = OP_DROPOUT, .p = dropout};
    int n = 0;
    out[n++] = (layer_spec_t){.kind = OP_EMBED, .n = C, .init_std = std};
    out[n++] = (layer_spec_t){.kind = OP_POS_EMBED, .init_std = std};
    if (drop) out[n++] = dr;
    for (int l = 0; l < n_layer; l++) {
        const int x = n - 1; /* the residual stream */
        out[n++] = (layer_spec_t){.kind = OP_LAYERNORM};
        out[n++] = (layer_spec_t){.kind = OP_LINEAR, .n = 3 * C, .init_std = std};
        out[n++] = (layer_spec_t){.kind = OP_ATTENTION, .n = n_head};
        out[n++] = (layer_spec_t){.kind = OP_LINEAR, .n = C, .init_std = proj};
        if (drop) out[n++] = dr;
        out[n] = (layer_spec_t){.kind = OP_ADD, .nsrc = 2, .src = {n - 1, x}};
        n++;
        const int y = n - 1;
        out[n++] = (layer_spec_t){.kind = OP_LAYERNORM};
        out[n++] = (layer_spec_t){.kind = OP_LINEAR, .n = 4 * C, .init_std = std};
        out[n++] = (layer_spec_t){.kind = OP_GELU};
        out[n++] = (layer_spec_t){.kind = OP_LINEAR, .n = C, .init_std = proj};
        if (drop) out[n++] = dr;
        out[n] = (layer_spec_t){.kind = OP_ADD, .nsrc = 2, .src = {n - 1, y}};
        n++;
    }
    out[n++] = (layer_spec_t){.kind = OP_LAYERNORM};
    out[n++] = (layer_spec_t){.kind = OP_LINEAR, .n = vocab, .nobias = 1, .tie = tie ? 1 : 0, .init_std = std};
    return n;
}

int layers_cnn(int classes, layer_spec_t *out, int max) {
    char err[128];
    char text[160];
    snprintf(text, sizeof text,
             "conv(32,5) relu maxpool(2) conv(64,5) relu maxpool(2) flatten "
             "linear(1024) relu dropout(0.4) linear(%d)", classes);
    return layers_parse(text, out, max, err, sizeof err);
}

/* The residual block that starts at layer i within [i, hi): the index of its
 * add (the outermost when several start at i), or -1. */
static int block_at(const layer_spec_t *l, int i, int hi) {
    for (int j = hi - 1; j > i; j--)
        if (l[j].kind == OP_ADD && l[j].nsrc == 2 && l[j].src[0] == j - 1 && l[j].src[1] == i - 1) return j;
    return -1;
}

static size_t format_range(const layer_spec_t *l, int lo, int hi, char *buf, size_t len, size_t o) {
    for (int i = lo; i < hi && o < len; i++) {
        const char *sep = i > lo ? " " : "";
        const char *nm = layers_op_name(l[i].kind);
        int w;
        const int end = block_at(l, i, hi);
        if (end >= 0) {
            w = snprintf(buf + o, len - o, "%sresidual(", sep);
            if (w < 0 || (o += (size_t)w) >= len) break;
            o = format_range(l, i, end, buf, len, o);
            if (o >= len) break;
            w = snprintf(buf + o, len - o, ")");
            i = end;
            if (w < 0) break;
            o += (size_t)w;
            continue;
        }
        switch (l[i].kind) {
        case OP_LINEAR: w = snprintf(buf + o, len - o, "%s%s(%d)", sep, nm, l[i].n); break;
        case OP_CONV2D: w = snprintf(buf + o, len - o, "%s%s(%d,%d,%d,%d)", sep, nm, l[i].n, l[i].k, l[i].stride, l[i].pad); break;
        case OP_MAXPOOL: w = snprintf(buf + o, len - o, "%s%s(%d,%d)", sep, nm, l[i].k, l[i].stride); break;
        case OP_DROPOUT: {
            /* the shortest text that reads back as the same float: %g alone
             * turned 0.47777779 into 0.477778, another model (found by tests/fuzz) */
            char num[32];
            for (int prec = 6; prec <= 9; prec++) {
                snprintf(num, sizeof num, "%.*g", prec, (double)l[i].p);
                if (strtof(num, NULL) == l[i].p) break;
            }
            w = snprintf(buf + o, len - o, "%s%s(%s)", sep, nm, num);
            break;
        }
        default: w = snprintf(buf + o, len - o, "%s%s", sep, nm); break;
        }
        if (w < 0) break;
        o += (size_t)w;
    }
    return o;
}

void layers_format(const layer_spec_t *l, int n, char *buf, size_t len) {
    if (!len) return;
    buf[0] = 0;
    format_range(l, 0, n, buf, len, 0);
}
