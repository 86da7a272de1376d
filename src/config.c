#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_INT, T_LONG, T_DOUBLE, T_BOOL, T_STR, T_ENUM, T_INTLIST } key_type_t;

typedef struct key_def {
    const char *section, *key;
    key_type_t type;
    size_t off;
    size_t count_off; /* T_INTLIST: where the element count lives */
    double lo, hi;    /* inclusive range for numbers (and list elements) */
    const char *choices; /* T_ENUM: "a|b|c", stored as the index */
    const char *dflt;
    int model;        /* shapes the parameters (part of the model hash) */
} key_def_t;

#define F(field) offsetof(config_t, field)
#define BIG 1e18
static const key_def_t keys[] = {
    {"model", "arch", T_ENUM, F(arch), 0, 0, 0, "mlp|cnn|layers|gpt", "mlp", 1},
    {"model", "hidden", T_INTLIST, F(hidden), F(nhidden), 1, 1 << 20, NULL, "256,128,100", 1},
    {"model", "layers", T_STR, F(layers), 0, 0, 0, NULL, "", 1},
    {"model", "activation", T_ENUM, F(activation), 0, 0, 0, "relu|gelu|tanh", "relu", 1},
    {"model", "n_layer", T_INT, F(n_layer), 0, 1, 1024, NULL, "4", 1},
    {"model", "n_head", T_INT, F(n_head), 0, 1, 1024, NULL, "4", 1},
    {"model", "n_embd", T_INT, F(n_embd), 0, 1, 1 << 16, NULL, "256", 1},
    {"model", "block_size", T_INT, F(block_size), 0, 1, 1 << 16, NULL, "128", 1},
    {"model", "tie_embeddings", T_BOOL, F(tie_embeddings), 0, 0, 1, NULL, "true", 1},
    {"model", "dropout", T_DOUBLE, F(dropout), 0, 0, 0.999, NULL, "0", 1},
    {"data", "dataset", T_ENUM, F(dataset), 0, 0, 0, "fashion-mnist|synthetic|text", "fashion-mnist", 1},
    {"data", "path", T_STR, F(path), 0, 0, 0, NULL, "", 0},
    {"data", "val_fraction", T_DOUBLE, F(val_fraction), 0, 1e-6, 0.5, NULL, "0.1", 0},
    {"data", "dir", T_STR, F(dir), 0, 0, 0, NULL, "/usr/share/datasets/fashion-mnist", 0},
    {"data", "batch_size", T_INT, F(batch_size), 0, 1, 1 << 20, NULL, "64", 0},
    {"data", "shape", T_INTLIST, F(shape), F(nshape), 1, 1 << 20, NULL, "1,28,28", 1},
    {"data", "classes", T_INT, F(classes), 0, 2, 1 << 20, NULL, "10", 1},
    {"data", "train_size", T_INT, F(train_size), 0, 1, 1 << 30, NULL, "10000", 0},
    {"data", "test_size", T_INT, F(test_size), 0, 1, 1 << 30, NULL, "2000", 0},
    {"optim", "name", T_ENUM, F(optim), 0, 0, 0, "sgd|adamw", "sgd", 0},
    {"optim", "lr", T_DOUBLE, F(lr), 0, 1e-12, 1e6, NULL, "0.01", 0},
    {"optim", "momentum", T_DOUBLE, F(momentum), 0, 0, 0.999999, NULL, "0.9", 0},
    {"optim", "nesterov", T_BOOL, F(nesterov), 0, 0, 1, NULL, "false", 0},
    {"optim", "weight_decay", T_DOUBLE, F(weight_decay), 0, 0, 1e3, NULL, "0", 0},
    {"optim", "beta1", T_DOUBLE, F(beta1), 0, 0, 0.999999, NULL, "0.9", 0},
    {"optim", "beta2", T_DOUBLE, F(beta2), 0, 0, 0.999999999, NULL, "0.999", 0},
    {"optim", "eps", T_DOUBLE, F(eps), 0, 1e-30, 1, NULL, "1e-8", 0},
    {"optim", "schedule", T_ENUM, F(schedule), 0, 0, 0, "constant|step|cosine", "constant", 0},
    {"optim", "warmup_steps", T_LONG, F(warmup_steps), 0, 0, BIG, NULL, "0", 0},
    {"optim", "step_every", T_LONG, F(step_every), 0, 1, BIG, NULL, "1000", 0},
    {"optim", "gamma", T_DOUBLE, F(gamma), 0, 0, 1, NULL, "0.1", 0},
    {"optim", "min_lr", T_DOUBLE, F(min_lr), 0, 0, 1e6, NULL, "0", 0},
    {"train", "epochs", T_INT, F(epochs), 0, 1, 1 << 20, NULL, "10", 0},
    {"train", "max_steps", T_LONG, F(max_steps), 0, 0, BIG, NULL, "0", 0},
    {"train", "seed", T_LONG, F(seed), 0, 0, BIG, NULL, "1", 0},
    {"train", "eval_every", T_INT, F(eval_every), 0, 0, 1 << 20, NULL, "1", 0},
    {"train", "device", T_ENUM, F(device), 0, 0, 0, "cpu|cuda", "cpu", 0},
    {"train", "gpu", T_STR, F(gpu), 0, 0, 0, NULL, "auto", 0},
    {"train", "tf32", T_BOOL, F(tf32), 0, 0, 1, NULL, "false", 0},
    {"log", "metrics", T_STR, F(metrics), 0, 0, 0, NULL, "", 0},
    {"log", "every_steps", T_LONG, F(every_steps), 0, 1, BIG, NULL, "100", 0},
    {"log", "progress", T_ENUM, F(progress), 0, 0, 0, "auto|on|off", "auto", 0},
    {"log", "params", T_STR, F(params_out), 0, 0, 0, NULL, "", 0},
    {"log", "trace_dir", T_STR, F(trace_dir), 0, 0, 0, NULL, "", 0},
    {"log", "profile", T_BOOL, F(profile), 0, 0, 0, NULL, "false", 0},
    {"ddp", "bucket_mb", T_DOUBLE, F(bucket_mb), 0, 1e-6, 1e6, NULL, "4", 0},
    {"ddp", "overlap", T_BOOL, F(overlap), 0, 0, 1, NULL, "true", 0},
    {"ddp", "accumulate", T_INT, F(accumulate), 0, 1, 1 << 20, NULL, "1", 0},
    {"ddp", "zero", T_INT, F(zero), 0, 0, 1, NULL, "0", 0},
    {"ddp", "fused_update", T_ENUM, F(fused_update), 0, 0, 0, "auto|on|off", "auto", 0},
    {"ddp", "algorithm", T_ENUM, F(algorithm), 0, 0, 0, "auto|ring|rd|native|nccl|shm|hier", "auto", 0},
    {"ddp", "timeout_s", T_DOUBLE, F(timeout_s), 0, 0, 1e9, NULL, "30", 0},
    {"ddp", "compress", T_ENUM, F(compress), 0, 0, 0, "none|bf16|fp16|powersgd", "none", 0},
    {"ddp", "powersgd_rank", T_INT, F(powersgd_rank), 0, 1, 64, NULL, "4", 0},
    {"ddp", "powersgd_start", T_LONG, F(powersgd_start), 0, 0, BIG, NULL, "1000", 0},
    {"checkpoint", "dir", T_STR, F(ckpt_dir), 0, 0, 0, NULL, "", 0},
    {"checkpoint", "every_steps", T_LONG, F(ckpt_every), 0, 0, BIG, NULL, "0", 0},
    {"checkpoint", "resume", T_ENUM, F(resume), 0, 0, 0, "auto|never", "auto", 0},
};
#define NKEYS (int)(sizeof keys / sizeof keys[0])
_Static_assert(sizeof keys / sizeof keys[0] <= CFG_KEYS_MAX, "raise CFG_KEYS_MAX");

static int known_section(const char *s) {
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].section, s)) return 1;
    return 0;
}

static void section_list(char *buf, size_t len) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < NKEYS && o < len; i++)
        if (i == 0 || strcmp(keys[i].section, keys[i - 1].section))
            o += (size_t)snprintf(buf + o, len - o, "%s[%s]", o ? " " : "", keys[i].section);
}

static const key_def_t *find_key(const char *section, const char *key) {
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].section, section) && !strcmp(keys[i].key, key)) return &keys[i];
    return NULL;
}

static int parse_number(const char *v, double *out, int integer) {
    char *end;
    errno = 0;
    const double d = integer ? (double)strtoll(v, &end, 10) : strtod(v, &end);
    while (isspace((unsigned char)*end)) end++;
    if (end == v || *end || errno || !isfinite(d)) return -1;
    *out = d;
    return 0;
}

static int enum_index(const char *choices, const char *v) {
    int idx = 0;
    const size_t n = strlen(v);
    for (const char *p = choices; *p; idx++) {
        const char *bar = strchr(p, '|');
        const size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return idx;
        p += len + (bar ? 1 : 0);
    }
    return -1;
}

static const char *enum_name(const char *choices, int idx, char *buf, size_t len) {
    const char *p = choices;
    for (int i = 0; i < idx && p; i++) p = strchr(p, '|'), p = p ? p + 1 : NULL;
    if (!p) return "?";
    const char *bar = strchr(p, '|');
    snprintf(buf, len, "%.*s", bar ? (int)(bar - p) : (int)strlen(p), p);
    return buf;
}

/* Sets one key from text; 0, or -1 with "[section] key: problem" in err. */
static int set_key(config_t *c, const key_def_t *k, const char *v, char *err, size_t errlen) {
    char *base = (char *)c;
    double d;
    switch (k->type) {
    case T_INT: case T_LONG: case T_DOUBLE:
        if (parse_number(v, &d, k->type != T_DOUBLE)) {
            snprintf(err, errlen, "[%s] %s: expected %s, got '%s'", k->section, k->key,
                     k->type == T_DOUBLE ? "a number" : "an integer", v);
            return -1;
        }
        if (d < k->lo || d > k->hi) {
            snprintf(err, errlen, "[%s] %s: %s is out of range [%.15g, %.15g]", k->section, k->key, v, k->lo, k->hi);
            return -1;
        }
        if (k->type == T_INT) *(int *)(base + k->off) = (int)d;
        else if (k->type == T_LONG) *(long *)(base + k->off) = (long)d;
        else *(double *)(base + k->off) = d;
        return 0;
    case T_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on")) *(int *)(base + k->off) = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off")) *(int *)(base + k->off) = 0;
        else {
            snprintf(err, errlen, "[%s] %s: expected true or false, got '%s'", k->section, k->key, v);
            return -1;
        }
        return 0;
    case T_STR:
        if (strlen(v) >= CFG_STR_MAX) {
            snprintf(err, errlen, "[%s] %s: longer than %d characters", k->section, k->key, CFG_STR_MAX - 1);
            return -1;
        }
        snprintf(base + k->off, CFG_STR_MAX, "%s", v);
        return 0;
    case T_ENUM: {
        const int i = enum_index(k->choices, v);
        if (i < 0) {
            snprintf(err, errlen, "[%s] %s: expected one of %s, got '%s'", k->section, k->key, k->choices, v);
            return -1;
        }
        *(int *)(base + k->off) = i;
        return 0;
    }
    case T_INTLIST: {
        int *out = (int *)(base + k->off), n = 0;
        const char *p = v;
        while (*p) {
            char *end;
            errno = 0;
            const long x = strtol(p, &end, 10);
            if (end == p || errno || n == CFG_LIST_MAX || x < k->lo || x > k->hi) {
                snprintf(err, errlen, "[%s] %s: expected up to %d comma-separated integers in [%.15g, %.15g], got '%s'",
                         k->section, k->key, CFG_LIST_MAX, k->lo, k->hi, v);
                return -1;
            }
            out[n++] = (int)x;
            while (isspace((unsigned char)*end)) end++;
            if (*end == ',') end++;
            else if (*end) {
                snprintf(err, errlen, "[%s] %s: expected comma-separated integers, got '%s'", k->section, k->key, v);
                return -1;
            }
            p = end;
            while (isspace((unsigned char)*p)) p++;
        }
        if (n == 0 && strcmp(k->key, "hidden")) {
            snprintf(err, errlen, "[%s] %s: empty list", k->section, k->key);
            return -1;
        }
        *(int *)(base + k->count_off) = n;
        return 0;
    }
    }
    return -1;
}

void config_defaults(config_t *c) {
    char err[256];
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NKEYS; i++)
        if (set_key(c, &keys[i], keys[i].dflt, err, sizeof err)) abort(); /* a bad default is a bug */
}

typedef struct parse_state {
    config_t *c;
    FILE *f;
    const char *path;
    int line;
    int failed;
    char *err;
    size_t errlen;
} parse_state_t;

static void trim(char *s) {
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    size_t k = 0;
    while (isspace((unsigned char)s[k])) k++;
    memmove(s, s + k, n - k + 1);
}

/* inih reads through here, so we know the line of every key and can check
 * section names (inih reports a section only with its first key). */
static char *reader(char *str, int num, void *stream) {
    parse_state_t *st = stream;
    if (st->failed || !fgets(str, num, st->f)) return NULL;
    st->line++;
    const size_t n = strlen(str);
    if (n == (size_t)num - 1 && str[n - 1] != '\n' && !feof(st->f)) {
        snprintf(st->err, st->errlen, "%s:%d: line longer than %d characters", st->path, st->line, num - 2);
        st->failed = 1;
        return NULL;
    }
    char t[256];
    snprintf(t, sizeof t, "%s", str);
    trim(t);
    if (t[0] == '[') {
        char *close = strchr(t, ']');
        if (close) {
            *close = 0;
            trim(t + 1);
            if (!known_section(t + 1)) {
                char list[256];
                section_list(list, sizeof list);
                snprintf(st->err, st->errlen, "%s:%d: unknown section [%s] (known: %s)", st->path, st->line, t + 1, list);
                st->failed = 1;
                return NULL;
            }
        }
    }
    return str;
}

static int handler(void *user, const char *section, const char *name, const char *value) {
    parse_state_t *st = user;
    if (st->failed) return 0;
    const key_def_t *k = find_key(section, name);
    char e[512];
    if (!k) {
        if (!*section) snprintf(e, sizeof e, "key '%s' outside any section", name);
        else snprintf(e, sizeof e, "[%s] %s: unknown key", section, name);
    } else if (!set_key(st->c, k, value, e, sizeof e)) {
        snprintf(st->c->origin[k - keys], sizeof st->c->origin[0], "%s:%d", st->path, st->line);
        return 1;
    }
    snprintf(st->err, st->errlen, "%s:%d: %s", st->path, st->line, e);
    st->failed = 1;
    return 0;
}

int config_load(config_t *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    const int rc = config_load_file(c, f, path, err, errlen);
    fclose(f);
    return rc;
}

int config_load_file(config_t *c, FILE *f, const char *path, char *err, size_t errlen) {
    parse_state_t st = {.c = c, .f = f, .path = path, .err = err, .errlen = errlen};
    const int rc = ini_parse_stream(reader, &st, handler, &st);
    if (st.failed) return -1;
    if (rc) { /* a syntax error inih found itself */
        snprintf(err, errlen, "%s:%d: syntax error (expected [section] or key = value)", path, rc > 0 ? rc : st.line);
        return -1;
    }
    return 0;
}

int config_override(config_t *c, const char *arg, char *err, size_t errlen) {
    char sec[64], key[64], e[512];
    const char *dot = strchr(arg, '.'), *eq = strchr(arg, '=');
    if (!dot || !eq || dot > eq || dot == arg || eq == dot + 1 || (size_t)(dot - arg) >= sizeof sec ||
        (size_t)(eq - dot - 1) >= sizeof key) {
        snprintf(err, errlen, "override '%s': expected section.key=value", arg);
        return -1;
    }
    snprintf(sec, sizeof sec, "%.*s", (int)(dot - arg), arg);
    snprintf(key, sizeof key, "%.*s", (int)(eq - dot - 1), dot + 1);
    const key_def_t *k = find_key(sec, key);
    if (!k) {
        if (!known_section(sec)) snprintf(e, sizeof e, "unknown section [%s]", sec);
        else snprintf(e, sizeof e, "[%s] %s: unknown key", sec, key);
    } else if (!set_key(c, k, eq + 1, e, sizeof e)) {
        snprintf(c->origin[k - keys], sizeof c->origin[0], "override '%.100s'", arg);
        return 0;
    }
    snprintf(err, errlen, "override '%s': %s", arg, e);
    return -1;
}

static const char *origin_of(const config_t *c, const char *section, const char *key) {
    const key_def_t *k = find_key(section, key);
    return k && c->origin[k - keys][0] ? c->origin[k - keys] : "default";
}

int config_validate(config_t *c, char *err, size_t errlen) {
    c->gpu_index = -1;
    if (strcmp(c->gpu, "auto")) {
        double d;
        if (parse_number(c->gpu, &d, 1) || d < 0 || d > 1024) {
            snprintf(err, errlen, "%s: [train] gpu: expected auto or a device index, got '%s'", origin_of(c, "train", "gpu"),
                     c->gpu);
            return -1;
        }
        c->gpu_index = (int)d;
    }
    if (c->arch == CFG_ARCH_LAYERS && !c->layers[0]) {
        snprintf(err, errlen, "%s: [model] arch = layers needs [model] layers", origin_of(c, "model", "arch"));
        return -1;
    }
    if (c->arch != CFG_ARCH_LAYERS && c->layers[0]) {
        snprintf(err, errlen, "%s: [model] layers is set but [model] arch is not 'layers'", origin_of(c, "model", "layers"));
        return -1;
    }
    if (c->arch == CFG_ARCH_GPT && c->dataset == CFG_DATA_FMNIST) {
        snprintf(err, errlen, "%s: [model] arch = gpt needs [data] dataset = text or synthetic (token streams)",
                 origin_of(c, "model", "arch"));
        return -1;
    }
    if (c->dataset == CFG_DATA_TEXT && c->arch != CFG_ARCH_GPT) {
        snprintf(err, errlen, "%s: [data] dataset = text needs [model] arch = gpt", origin_of(c, "data", "dataset"));
        return -1;
    }
    if (c->dataset == CFG_DATA_TEXT && !c->path[0]) {
        snprintf(err, errlen, "%s: [data] dataset = text needs [data] path", origin_of(c, "data", "dataset"));
        return -1;
    }
    if (c->arch == CFG_ARCH_GPT && c->n_embd % c->n_head) {
        const char *o = origin_of(c, "model", "n_head"); /* whichever of the two was set */
        if (!strcmp(o, "default")) o = origin_of(c, "model", "n_embd");
        snprintf(err, errlen, "%s: [model] n_embd = %d is not a multiple of n_head = %d", o, c->n_embd, c->n_head);
        return -1;
    }
    if (c->dataset == CFG_DATA_SYNTHETIC && c->nshape > 3) {
        snprintf(err, errlen, "%s: [data] shape: at most 3 dimensions (C,H,W)", origin_of(c, "data", "shape"));
        return -1;
    }
    if (c->ckpt_every > 0 && !c->ckpt_dir[0]) {
        snprintf(err, errlen, "%s: [checkpoint] every_steps needs [checkpoint] dir", origin_of(c, "checkpoint", "every_steps"));
        return -1;
    }
    if (c->compress == CFG_COMPRESS_POWERSGD && c->zero) {
        const char *z = origin_of(c, "ddp", "zero"), *p = origin_of(c, "ddp", "compress");
        snprintf(err, errlen, "%s: [ddp] compress = powersgd cannot be combined with [ddp] zero = 1 (set at %s): ZeRO-1 "
                 "reduce-scatters the gradients, PowerSGD sends low-rank factors of whole matrices", p, z);
        return -1;
    }
    if (c->compress != CFG_COMPRESS_NONE && c->device == CFG_DEVICE_CUDA) {
        snprintf(err, errlen, "%s: [ddp] compress runs on the host; it is not supported with [train] device = cuda yet",
                 origin_of(c, "ddp", "compress"));
        return -1;
    }
    if (c->optim == CFG_OPTIM_SGD && c->nesterov && c->momentum == 0.0) {
        snprintf(err, errlen, "%s: [optim] nesterov needs momentum > 0", origin_of(c, "optim", "nesterov"));
        return -1;
    }
    return 0;
}

void config_write(const config_t *c, FILE *f, int model_only) {
    const char *base = (const char *)c;
    const char *cur = "";
    for (int i = 0; i < NKEYS; i++) {
        const key_def_t *k = &keys[i];
        if (model_only && !k->model) continue;
        if (strcmp(cur, k->section)) {
            fprintf(f, "%s[%s]\n", *cur ? "\n" : "", k->section);
            cur = k->section;
        }
        fprintf(f, "%s = ", k->key);
        char buf[64];
        switch (k->type) {
        case T_INT: case T_BOOL: fprintf(f, "%d", *(const int *)(base + k->off)); break;
        case T_LONG: fprintf(f, "%ld", *(const long *)(base + k->off)); break;
        case T_DOUBLE: fprintf(f, "%.17g", *(const double *)(base + k->off)); break;
        case T_STR: fputs(base + k->off, f); break;
        case T_ENUM: fputs(enum_name(k->choices, *(const int *)(base + k->off), buf, sizeof buf), f); break;
        case T_INTLIST: {
            const int n = *(const int *)(base + k->count_off);
            for (int j = 0; j < n; j++) fprintf(f, "%s%d", j ? "," : "", ((const int *)(base + k->off))[j]);
            break;
        }
        }
        fputc('\n', f);
    }
}
