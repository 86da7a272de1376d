#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int metrics_open(metrics_t *m, const char *path, int progress, int append, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    if (path && *path && !(m->f = fopen(path, append ? "a" : "w"))) {
        snprintf(err, errlen, "[log] metrics: cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    const int tty = isatty(STDERR_FILENO);
    m->live = progress == CFG_PROGRESS_ON || (progress == CFG_PROGRESS_AUTO && tty);
    m->plain = progress == CFG_PROGRESS_AUTO && !tty;
    m->t_start = now_s();
    return 0;
}

void metrics_close(metrics_t *m) {
    metrics_progress_end(m);
    if (m->f) fclose(m->f);
    m->f = NULL;
}

/* JSON has no NaN or infinity: write null so the file stays parseable */
static void num(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ",\"%s\":%.6g", key, v);
    else fprintf(f, ",\"%s\":null", key);
}

static void timing(FILE *f, double compute, double comm, double exposed, double wire, double compress) {
    if (compute < 0) return;
    num(f, "compute_ms", compute);
    num(f, "comm_ms", comm);
    num(f, "exposed_comm_ms", exposed);
    if (isfinite(wire)) fprintf(f, ",\"wire_bytes\":%.0f", wire); /* exact: a byte count */
    if (compress >= 0) num(f, "compress_ms", compress);
}

void metrics_step(metrics_t *m, const step_record_t *r) {
    if (!m->f) return;
    fprintf(m->f, "{\"event\":\"step\",\"step\":%ld,\"epoch\":%d", r->step, r->epoch);
    num(m->f, "loss", r->loss);
    num(m->f, "step_ms", r->step_ms);
    num(m->f, "lr", r->lr);
    timing(m->f, r->compute_ms, r->comm_ms, r->exposed_comm_ms, r->wire_bytes, r->compress_ms);
    if (r->straggler && r->straggler->rank >= 0)
        fprintf(m->f, ",\"slowest_rank\":%d,\"lateness_ms\":%.3f,\"cause\":\"%s\"", r->straggler->rank,
                r->straggler->lateness_ms, straggler_cause_name(r->straggler->cause));
    else if (r->straggler)
        fputs(",\"slowest_rank\":null,\"lateness_ms\":0,\"cause\":\"none\"", m->f);
    fputs("}\n", m->f);
    fflush(m->f);
}

void metrics_profile(metrics_t *m, const profile_layer_t *layers, int n, const profile_record_t *r) {
    if (!m->f) return;
    for (int i = 0; i < n; i++) {
        const profile_layer_t *l = &layers[i];
        fprintf(m->f, "{\"event\":\"profile_layer\",\"order\":%d,\"node\":%d,\"kind\":\"%s\"", i, l->node, l->kind);
        num(m->f, "forward_ms", l->forward_ms);
        num(m->f, "backward_ms", l->backward_ms);
        fprintf(m->f, ",\"lo\":%zu,\"hi\":%zu}\n", l->lo, l->hi);
    }
    fprintf(m->f, "{\"event\":\"profile\",\"steps\":%ld,\"batch\":%d,\"ranks\":%d,\"params\":%zu", r->steps, r->batch,
            r->ranks, r->params);
    num(m->f, "forward_ms", r->forward_ms);
    num(m->f, "backward_ms", r->backward_ms);
    num(m->f, "optimizer_ms", r->optimizer_ms);
    num(m->f, "data_ms", r->data_ms);
    num(m->f, "step_ms", r->step_ms);
    fprintf(m->f, "}\n");
    fflush(m->f);
}

void metrics_eval(metrics_t *m, int epoch, double acc, double loss, int bytes) {
    metrics_progress_end(m);
    if ((m->live || m->plain) && bytes)
        fprintf(stderr, "epoch %d: validation loss %.4f (%.4f bits per byte), next-byte accuracy %.4f\n", epoch, loss,
                loss / M_LN2, acc);
    else if (m->live || m->plain)
        fprintf(stderr, "epoch %d: test accuracy %.4f, test loss %.4f\n", epoch, acc, loss);
    if (!m->f) return;
    fprintf(m->f, "{\"event\":\"eval\",\"epoch\":%d", epoch);
    num(m->f, "test_acc", acc);
    num(m->f, "test_loss", loss);
    if (bytes) { /* a byte-level language model: the loss in nats per byte, and in bits */
        num(m->f, "val_loss", loss);
        num(m->f, "bits_per_byte", loss / M_LN2);
    }
    fputs("}\n", m->f);
    fflush(m->f);
}

void metrics_done(metrics_t *m, const done_record_t *r) {
    metrics_progress_end(m);
    if (!m->f) return;
    fprintf(m->f, "{\"event\":\"done\",\"ranks\":%d,\"steps\":%ld", r->ranks, r->steps);
    num(m->f, "median_step_ms", r->median_step_ms);
    num(m->f, "samples_per_s", r->samples_per_s);
    if (r->test_acc >= 0) num(m->f, "test_acc", r->test_acc);
    else fputs(",\"test_acc\":null", m->f);
    num(m->f, "wall_s", r->wall_s);
    if (r->compress) fprintf(m->f, ",\"compress\":\"%s\"", r->compress);
    if (r->sync) fprintf(m->f, ",\"sync\":\"%s\"", r->sync);
    timing(m->f, r->compute_ms, r->comm_ms, r->exposed_comm_ms, r->wire_bytes, r->compress_ms);
    if (r->named) { /* steps each rank was named the straggler, by cause */
        for (int c = STRAGGLER_COMPUTE; c <= STRAGGLER_LINK; c++) {
            fprintf(m->f, ",\"straggler_%s_steps\":[", straggler_cause_name(c));
            for (int k = 0; k < r->ranks; k++) fprintf(m->f, "%s%ld", k ? "," : "", r->named[k * 3 + c]);
            fputc(']', m->f);
        }
    }
    fputs("}\n", m->f);
    fflush(m->f);
}

static void fmt_eta(double s, char *buf, size_t len) {
    if (!isfinite(s) || s < 0) snprintf(buf, len, "?");
    else if (s >= 3600) snprintf(buf, len, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

void metrics_progress(metrics_t *m, int epoch, int epochs, long step, long total, double loss,
                      double samples_per_s) {
    if (!m->live && !m->plain) return;
    const double t = now_s();
    /* a live line redraws 5 times a second; plain lines every 10 s */
    if (step < total && t - m->last_print < (m->live ? 0.2 : 10.0)) return;
    m->last_print = t;
    const double el = t - m->t_start;
    char eta[32];
    fmt_eta(step ? el / (double)step * (double)(total - step) : -1, eta, sizeof eta);
    fprintf(stderr, "%sepoch %d/%d  step %ld/%ld  loss %.4f  %.0f samples/s  ETA %s%s", m->live ? "\r" : "",
            epoch, epochs, step, total, loss, samples_per_s, eta, m->live ? "\033[K" : "\n");
    fflush(stderr);
}

void metrics_progress_end(metrics_t *m) {
    if (m->live && m->last_print > 0) fputc('\n', stderr);
    m->last_print = 0;
}
