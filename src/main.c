/* ddp-train CONFIG.ini [section.key=value ...]
 *
 * Runs one training job. Directly it is one process (an MPI singleton);
 * under mpirun (launch/ddprun) every rank runs this same program and the
 * ranks train one model data-parallel.
 *
 * Failure policy: problems found at start-up (config, data, a rank with a
 * different config) are agreed on by all ranks, so every rank exits with a
 * message and status 2 (1 for a failed start after the ranks connected). A
 * failure during training (a lost or silent rank, a write error) aborts the
 * whole job (MPI_Abort) so no rank is left waiting. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "faults.h"
#include "hash.h"
#include "liveness.h"
#include "train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddp-train CONFIG.ini [section.key=value ...]\n"
            "       ddp-train --print-config CONFIG.ini [section.key=value ...]\n"
            "Trains the model CONFIG describes; overrides replace keys of the file.\n"
            "Several ranks: launch/ddprun -np P -- CONFIG.ini [section.key=value ...]\n"
            "Keys and their meaning: configs/README.md\n");
}

static liveness_t *lv;

/* every exit that is not an abort: the helper threads stop before MPI does */
static int finish(int rc) {
    liveness_destroy(lv);
    lv = NULL;
    MPI_Finalize();
    return rc;
}

/* Guards the stretches between the ranks' agreements that block in MPI with
 * no timeout of their own (the engine's set-up: coll_comm_init's MPI
 * collectives; the replica check): a rank stopped there is named and the
 * job ends, instead of the others waiting forever (liveness.h). */
static void guard(int rank, double every_s, const char *stretch) {
    char what[128];
    snprintf(what, sizeof what, "ddp-train: rank %d: %s", rank, stretch ? stretch : "");
    liveness_guard(lv, stretch ? every_s : 0, what);
}

/* Gathers every rank's fingerprint; returns the first rank whose value
 * differs from rank 0's (filling theirs and rank 0's), or -1. Called under
 * a guard (a rank stopped here is named). */
static int differs_from_rank0(unsigned long long mine, int ranks, unsigned long long *theirs,
                              unsigned long long *zero) {
    unsigned long long *all = malloc((size_t)ranks * sizeof *all);
    if (!all) {
        fprintf(stderr, "ddp-train: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Allgather(&mine, 1, MPI_UNSIGNED_LONG_LONG, all, 1, MPI_UNSIGNED_LONG_LONG, MPI_COMM_WORLD);
    int bad = -1;
    for (int r = 1; r < ranks && bad < 0; r++)
        if (all[r] != all[0]) bad = r;
    *zero = all[0];
    *theirs = bad >= 0 ? all[bad] : all[0];
    free(all);
    return bad;
}

/* Every rank must train the same job: compare a hash of the effective
 * configuration. Returns 0, or -1 after every rank printed why. */
static int same_config_everywhere(const config_t *cfg, int rank, int ranks) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f) {
        config_write(cfg, f, 0);
        fclose(f);
    }
    const unsigned long long mine = text ? fnv1a(text, len) : 0;
    free(text);
    unsigned long long theirs, zero;
    const int bad = differs_from_rank0(mine, ranks, &theirs, &zero);
    if (bad >= 0)
        fprintf(stderr,
                "ddp-train: rank %d: the configuration differs between ranks (rank %d's hash %016llx, rank 0's %016llx); "
                "every rank must get the same CONFIG and overrides\n",
                rank, bad, theirs, zero);
    return bad >= 0 ? -1 : 0;
}

/* After training: every replica must hold the same parameters. */
static int replicas_identical(trainer_t *t) {
    unsigned long long theirs, zero;
    const float *p = trainer_params_host(t);
    const unsigned long long mine = p ? fnv1a(p, t->g->nweights * sizeof(float)) : 0;
    const int bad = differs_from_rank0(mine, t->ranks, &theirs, &zero);
    if (bad >= 0 && t->rank == 0)
        fprintf(stderr, "ddp-train: replicas diverged: rank %d's parameters hash %016llx, rank 0's %016llx\n", bad,
                theirs, zero);
    if (bad < 0 && t->rank == 0 && t->ranks > 1)
        printf("ddp-train: replicas identical on %d ranks (parameter hash %016llx)\n", t->ranks, zero);
    return bad >= 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    int provided, rank = 0, ranks = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    /* until training starts, a rank that stops answering is named by the
     * others instead of leaving them in a start-up agreement (liveness.h) */
    lv = ranks > 1 ? liveness_create(MPI_COMM_WORLD) : NULL;
    liveness_answer(lv, 1);
    guard(rank, 30, "start-up");
    /* DDP_PID_DIR: each rank writes rank-R.pid there (for fault tests and
     * tools that signal one rank) */
    const char *pid_dir = getenv("DDP_PID_DIR");
    if (pid_dir) {
        char p[4096];
        snprintf(p, sizeof p, "%s/rank-%d.pid", pid_dir, rank);
        FILE *f = fopen(p, "w");
        if (f) fprintf(f, "%d\n", (int)getpid()), fclose(f);
    }
    int a = 1, print_only = 0;
    if (a < argc && (!strcmp(argv[a], "-h") || !strcmp(argv[a], "--help"))) {
        if (rank == 0) usage(stdout);
        return finish(0);
    }
    if (a < argc && !strcmp(argv[a], "--print-config")) print_only = 1, a++;
    char err[1024] = "";
    config_t *cfg = malloc(sizeof *cfg);
    int rc = cfg ? 0 : -1;
    if (a >= argc) {
        snprintf(err, sizeof err, "no CONFIG given");
        rc = -1;
    }
    if (!rc) {
        config_defaults(cfg);
        rc = config_load(cfg, argv[a], err, sizeof err);
    }
    for (int i = a + 1; !rc && i < argc; i++) rc = config_override(cfg, argv[i], err, sizeof err);
    if (!rc) rc = config_validate(cfg, err, sizeof err);
    if (rc && a >= argc && rank == 0) usage(stderr);
    /* all ranks learn whether any rank could not read its configuration */
    if (trainer_agree(MPI_COMM_WORLD, rc != 0, err, sizeof err) || same_config_everywhere(cfg, rank, ranks)) {
        if (err[0]) fprintf(stderr, "ddp-train: rank %d: %s\n", rank, err);
        free(cfg);
        return finish(2);
    }
    guard(rank, cfg->timeout_s, "start-up");
    if (print_only) {
        if (rank == 0) config_write(cfg, stdout, 0);
        free(cfg);
        return finish(0);
    }
    trainer_t t;
    const int irc = trainer_init(&t, cfg, MPI_COMM_WORLD, err, sizeof err);
    if (irc == -2) {
        fprintf(stderr, "ddp-train: rank %d: %s\n", rank, err);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (irc) {
        fprintf(stderr, "ddp-train: rank %d: %s\n", rank, err);
        trainer_free(&t);
        free(cfg);
        return finish(2);
    }
    guard(rank, 0, NULL); /* training has libcoll's timeouts and the census below */
    /* every rank keeps answering pings while it trains: after a timeout the
     * census below names the rank that is really silent, not the neighbour
     * that was only waiting for it */
    if (rank == 0) {
        printf("ddp-train: %s: %zu parameters, %d training samples, batch %d x %d ranks x %d accumulation, %ld steps\n",
               argv[a], t.g->nweights, t.train.n, cfg->batch_size, ranks, cfg->accumulate, t.total_steps);
        fflush(stdout);
    }
    if (trainer_run(&t, err, sizeof err)) {
        char who[512] = "";
        if (strstr(err, "timeout") && liveness_census(lv, cfg->timeout_s < 3 ? cfg->timeout_s : 3, "census", who, sizeof who))
            fprintf(stderr, "ddp-train: rank %d: %s\n", rank, who);
        fprintf(stderr, "ddp-train: rank %d: %s\n", rank, err);
        fflush(stderr);
        ddp_trace_dump(t.ddp, "abort"); /* unless libcoll's own failure wrote it */
        MPI_Abort(MPI_COMM_WORLD, 1); /* the other ranks may be blocked in a collective */
    }
    guard(rank, cfg->timeout_s, "the replica check after training");
    FAULT_HOOK_STAGE("replica-check", rank);
    rc = replicas_identical(&t);
    guard(rank, 0, NULL);
    trainer_free(&t);
    free(cfg);
    return finish(rc ? 1 : 0);
}
