/* Data: the IDX reader on good files and on each kind of corrupt file
 * (written here, plain and gzipped), the Fashion-MNIST loader's checks and
 * normalisation, permutations, the synthetic set and batch gathering. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cmocka.h>

#include "data.h"

static char dir[256];

static void put_be32(uint8_t *b, uint32_t v) {
    b[0] = (uint8_t)(v >> 24), b[1] = (uint8_t)(v >> 16), b[2] = (uint8_t)(v >> 8), b[3] = (uint8_t)v;
}

/* Writes an IDX file: magic type/ndim, dims, then `len` data bytes
 * (extra > 0 appends bytes, extra < 0 drops them). */
static const char *write_idx(const char *name, int gz, uint8_t type, int ndim, const uint32_t *dims, int extra) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    uint8_t buf[4096];
    size_t n = 0, total = 1;
    buf[n++] = 0, buf[n++] = 0, buf[n++] = type, buf[n++] = (uint8_t)ndim;
    for (int i = 0; i < ndim; i++, n += 4) put_be32(buf + n, dims[i]), total *= dims[i];
    for (size_t i = 0; i < total; i++) buf[n++] = (uint8_t)(i * 37 % 251 % (ndim == 1 ? 10 : 256));
    n = (size_t)((long)n + extra);
    for (size_t i = n - (extra > 0 ? (size_t)extra : 0); i < n; i++) buf[i] = 0xAB;
    if (gz) {
        gzFile f = gzopen(path, "wb");
        gzwrite(f, buf, (unsigned)n);
        gzclose(f);
    } else {
        FILE *f = fopen(path, "wb");
        fwrite(buf, 1, n, f);
        fclose(f);
    }
    return path;
}

static void expect_error(const char *path, int ndim, const char *needle) {
    uint8_t *data;
    uint32_t dims[3];
    char err[512] = "";
    assert_int_equal(idx_read(path, ndim, &data, dims, err, sizeof err), -1);
    assert_null(data);
    if (!strstr(err, needle) || !strstr(err, path)) fail_msg("error '%s' should name the file and '%s'", err, needle);
}

static void idx_good(void **st) {
    (void)st;
    for (int gz = 0; gz < 2; gz++) {
        const uint32_t d[3] = {2, 3, 4};
        const char *p = write_idx(gz ? "good.gz" : "good", gz, 0x08, 3, d, 0);
        uint8_t *data;
        uint32_t dims[3];
        char err[256];
        assert_int_equal(idx_read(p, 3, &data, dims, err, sizeof err), 0);
        assert_int_equal(dims[0], 2), assert_int_equal(dims[1], 3), assert_int_equal(dims[2], 4);
        for (int i = 0; i < 24; i++) assert_int_equal(data[i], (uint8_t)(i * 37 % 251));
        free(data);
    }
}

static void idx_corrupt(void **st) {
    (void)st;
    const uint32_t d3[3] = {2, 3, 4}, d1[1] = {5};
    for (int gz = 0; gz < 2; gz++) {
        char name[64];
#define NAME(s) (snprintf(name, sizeof name, "%s%s", s, gz ? ".gz" : ""), name)
        const char *p = write_idx(NAME("bad-magic"), gz, 0x08, 3, d3, 0);
        { FILE *f = fopen(p, "r+b"); if (!gz) { fputc(0x12, f); } fclose(f); }
        if (!gz) expect_error(p, 3, "bad magic number");
        expect_error(write_idx(NAME("float-type"), gz, 0x0D, 3, d3, 0), 3, "element type 0x0d not supported");
        expect_error(write_idx(NAME("labels-as-images"), gz, 0x08, 1, d1, 0), 3, "has 1 dimensions, expected 3 (images)");
        expect_error(write_idx(NAME("truncated"), gz, 0x08, 3, d3, -5), 3, "truncated: header promises 24 bytes of data, file has 19");
        expect_error(write_idx(NAME("trailing"), gz, 0x08, 3, d3, 3), 3, "unexpected bytes after the 24 bytes");
        expect_error(write_idx(NAME("short-header"), gz, 0x08, 3, d3, -30), 3, "truncated header");
        expect_error(write_idx(NAME("tiny"), gz, 0x08, 3, d3, -37), 3, "shorter than an IDX header");
        const uint32_t zero[3] = {2, 0, 4};
        expect_error(write_idx(NAME("zero-dim"), gz, 0x08, 3, zero, 0), 3, "dimension 1 is 0");
    }
    /* a gzip stream with damaged compressed bytes */
    const char *p = write_idx("damaged.gz", 1, 0x08, 3, d3, 0);
    FILE *f = fopen(p, "r+b");
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, len - 6, SEEK_SET); /* inside the CRC trailer */
    fputc(0x5A, f), fputc(0xA5, f);
    fclose(f);
    expect_error(p, 3, "corrupt gzip data");
    char missing[512];
    snprintf(missing, sizeof missing, "%s/no-such-file", dir);
    expect_error(missing, 1, "No such file or directory");
}

/* a fake Fashion-MNIST directory: n training, m test images of 2x3 */
static void fake_fmnist(const char *sub, uint32_t ntrain, uint32_t nlab, uint32_t ntest) {
    char d[300];
    snprintf(d, sizeof d, "%s/%s", dir, sub);
    assert_int_equal(mkdir(d, 0755) == 0 || access(d, F_OK) == 0, 1);
    char name[400];
    uint32_t di[3] = {ntrain, 2, 3}, dl[1] = {nlab};
    snprintf(name, sizeof name, "%s/train-images-idx3-ubyte.gz", sub), write_idx(name, 1, 0x08, 3, di, 0);
    snprintf(name, sizeof name, "%s/train-labels-idx1-ubyte", sub), write_idx(name, 0, 0x08, 1, dl, 0);
    di[0] = dl[0] = ntest;
    snprintf(name, sizeof name, "%s/t10k-images-idx3-ubyte.gz", sub), write_idx(name, 1, 0x08, 3, di, 0);
    snprintf(name, sizeof name, "%s/t10k-labels-idx1-ubyte.gz", sub), write_idx(name, 1, 0x08, 1, dl, 0);
}

static void fmnist_checks(void **st) {
    (void)st;
    dataset_t tr, te;
    char err[1024], d[300];
    fake_fmnist("ok", 40, 40, 7);
    snprintf(d, sizeof d, "%s/ok", dir);
    assert_int_equal(fmnist_load(d, &tr, &te, err, sizeof err), 0);
    assert_int_equal(tr.n, 40), assert_int_equal(te.n, 7), assert_int_equal(tr.classes, 10);
    assert_int_equal(tr.shape[0], 1), assert_int_equal(tr.shape[1], 2), assert_int_equal(tr.shape[2], 3);
    /* per-pixel standardisation over the training set */
    for (int j = 0; j < 6; j++) {
        double m = 0, v = 0;
        for (int i = 0; i < tr.n; i++) m += tr.x[i * 6 + j];
        m /= tr.n;
        for (int i = 0; i < tr.n; i++) v += (tr.x[i * 6 + j] - m) * (tr.x[i * 6 + j] - m);
        assert_true(fabs(m) < 1e-5);
        assert_true(fabs(sqrt(v / tr.n) - 1) < 1e-4);
    }
    dataset_free(&tr), dataset_free(&te);

    fake_fmnist("mismatch", 40, 39, 7);
    snprintf(d, sizeof d, "%s/mismatch", dir);
    assert_int_equal(fmnist_load(d, &tr, &te, err, sizeof err), -1);
    assert_non_null(strstr(err, "has 39 labels but"));
    assert_non_null(strstr(err, "has 40 images"));

    snprintf(d, sizeof d, "%s/nothing-here", dir);
    assert_int_equal(fmnist_load(d, &tr, &te, err, sizeof err), -1);
    assert_non_null(strstr(err, "train-images-idx3-ubyte"));
    assert_non_null(strstr(err, "apt-get install dataset-fashion-mnist"));

    /* a label outside 0..9 */
    char name[400];
    uint32_t dl[1] = {40};
    snprintf(name, sizeof name, "ok/train-labels-idx1-ubyte");
    const char *p = write_idx(name, 0, 0x08, 1, dl, 0);
    FILE *f = fopen(p, "r+b");
    fseek(f, 8 + 3, SEEK_SET);
    fputc(12, f);
    fclose(f);
    snprintf(d, sizeof d, "%s/ok", dir);
    assert_int_equal(fmnist_load(d, &tr, &te, err, sizeof err), -1);
    assert_non_null(strstr(err, "label 12 of sample 3 is outside 0..9"));
}

static void permutations(void **st) {
    (void)st;
    enum { N = 1001 };
    uint32_t a[N], b[N], c[N];
    data_permutation(a, N, 9, 0);
    data_permutation(b, N, 9, 0);
    data_permutation(c, N, 9, 1);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    int seen[N] = {0};
    for (int i = 0; i < N; i++) seen[a[i]]++;
    for (int i = 0; i < N; i++) assert_int_equal(seen[i], 1);
    data_permutation(a, 0, 1, 0); /* empty is fine */
}

static void synthetic_and_gather(void **st) {
    (void)st;
    dataset_t tr, te, tr2, te2;
    char err[256];
    assert_int_equal(synthetic_make(&tr, &te, (int[]){2, 3, 5}, 4, 300, 50, 7, err, sizeof err), 0);
    assert_int_equal(synthetic_make(&tr2, &te2, (int[]){2, 3, 5}, 4, 300, 50, 7, err, sizeof err), 0);
    assert_memory_equal(tr.x, tr2.x, 300 * 30 * sizeof(float));
    assert_memory_equal(tr.y, tr2.y, 300 * sizeof(int32_t));
    int count[4] = {0};
    for (int i = 0; i < tr.n; i++) {
        assert_true(tr.y[i] >= 0 && tr.y[i] < 4);
        count[tr.y[i]]++;
    }
    for (int c = 0; c < 4; c++) assert_true(count[c] > 20); /* every class occurs */
    const uint32_t idx[3] = {299, 0, 17};
    float x[3 * 30];
    int32_t y[3];
    data_gather(&tr, idx, 3, x, y);
    for (int i = 0; i < 3; i++) {
        assert_memory_equal(x + i * 30, tr.x + idx[i] * 30, 30 * sizeof(float));
        assert_int_equal(y[i], tr.y[idx[i]]);
    }
    dataset_free(&tr), dataset_free(&te), dataset_free(&tr2), dataset_free(&te2);
}

static int setup(void **st) {
    (void)st;
    snprintf(dir, sizeof dir, "/tmp/test_data.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static const char *write_text(const char *name, const void *bytes, size_t len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    fclose(f);
    return path;
}

/* the text loader: vocabulary, windows and their next-byte labels, the split, bad input */
static void text_windows(void **st) {
    (void)st;
    dataset_t tr, va;
    char err[512];
    const char *txt = "abracadabra, abracadabra!";
    char path[512];
    snprintf(path, sizeof path, "%s", write_text("t.txt", txt, strlen(txt))); /* 25 bytes */
    assert_int_equal(text_load(path, 4, 0.4, &tr, &va, err, sizeof err), 0);
    /* bytes that occur, in byte order: ' ' ! , a b c d r */
    assert_int_equal(tr.classes, 8);
    assert_int_equal(tr.byte_of[0], ' ');
    assert_int_equal(tr.byte_of[3], 'a');
    assert_int_equal(tr.byte_of[7], 'r');
    /* 15 training bytes: windows at 0..10; 10 validation bytes: disjoint windows at 0, 4 */
    assert_int_equal(tr.n, 11);
    assert_int_equal(va.n, 2);
    assert_int_equal(dataset_positions(&tr), 4);
    float x[8];
    int32_t y[8];
    const uint32_t idx[2] = {10, 1};
    data_gather(&tr, idx, 2, x, y);
    const char *w = txt + 10; /* "a, a" then the labels ", ab" */
    for (int t = 0; t < 4; t++) {
        assert_int_equal(tr.byte_of[(int)x[t]], w[t]);
        assert_int_equal(tr.byte_of[y[t]], w[t + 1]);
        assert_int_equal(tr.byte_of[(int)x[4 + t]], txt[1 + t]);
    }
    data_gather_range(&va, 1, 1, x, y);
    for (int t = 0; t < 4; t++) assert_int_equal(va.byte_of[(int)x[t]], txt[15 + 4 + t]);
    dataset_free(&tr);
    dataset_free(&va);

    /* a directory: its text files in name order, a binary one (a NUL byte) left out */
    char sub[512];
    snprintf(sub, sizeof sub, "%s/corpus", dir);
    mkdir(sub, 0755);
    write_text("corpus/b", "world!", 6);
    write_text("corpus/a", "hello ", 6);
    write_text("corpus/a.dat", "x\0y", 3);
    assert_int_equal(text_load(sub, 2, 0.25, &tr, &va, err, sizeof err), 0);
    assert_int_equal(tr.ntokens + va.ntokens, 12);
    char back[13] = {0};
    for (size_t i = 0; i < tr.ntokens; i++) back[i] = (char)tr.byte_of[tr.tokens[i]];
    for (size_t i = 0; i < va.ntokens; i++) back[tr.ntokens + i] = (char)va.byte_of[va.tokens[i]];
    assert_string_equal(back, "hello world!");
    dataset_free(&tr);
    dataset_free(&va);

    snprintf(sub, sizeof sub, "%s/missing.txt", dir);
    assert_int_equal(text_load(sub, 4, 0.1, &tr, &va, err, sizeof err), -1);
    assert_non_null(strstr(err, "missing.txt: No such file or directory"));
    assert_int_equal(text_load(path, 8, 0.1, &tr, &va, err, sizeof err), -1);
    assert_non_null(strstr(err, "t.txt: 25 bytes is too short for block_size 8: the validation split (2 bytes"));
    assert_int_equal(text_load(path, 30, 0.1, &tr, &va, err, sizeof err), -1);
    assert_non_null(strstr(err, "the training split (23 bytes"));
    assert_int_equal(text_load(write_text("one.txt", "aaaaaaaaaaaaaaaaaaaa", 20), 2, 0.2, &tr, &va, err, sizeof err), -1);
    assert_non_null(strstr(err, "1 distinct bytes"));
}

/* the synthetic stream is deterministic and keeps to its vocabulary */
static void text_synthetic_stream(void **st) {
    (void)st;
    dataset_t a, av, b, bv;
    char err[256];
    assert_int_equal(text_synthetic(13, 5000, 16, 0.1, 7, &a, &av, err, sizeof err), 0);
    assert_int_equal(text_synthetic(13, 5000, 16, 0.1, 7, &b, &bv, err, sizeof err), 0);
    assert_int_equal(a.ntokens, 4500);
    assert_memory_equal(a.tokens, b.tokens, a.ntokens);
    for (size_t i = 0; i < a.ntokens; i++) assert_true(a.tokens[i] < 13);
    dataset_free(&a), dataset_free(&av), dataset_free(&b), dataset_free(&bv);
}

static int teardown(void **st) {
    (void)st;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(idx_good),     cmocka_unit_test(idx_corrupt),          cmocka_unit_test(fmnist_checks),
        cmocka_unit_test(permutations), cmocka_unit_test(synthetic_and_gather), cmocka_unit_test(text_windows),
        cmocka_unit_test(text_synthetic_stream),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
