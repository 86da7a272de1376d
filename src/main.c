/* ddp-train CONFIG.ini [section.key=value ...]
 *
 * Runs one training job. Directly it is one process (an MPI singleton);
 * under mpirun every rank runs this same program. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddp-train CONFIG.ini [section.key=value ...]\n"
            "       ddp-train --print-config CONFIG.ini [section.key=value ...]\n"
            "Trains the model CONFIG describes; overrides replace keys of the file.\n"
            "Keys and their meaning: configs/README.md\n");
}

static int finish(int rc) {
    MPI_Finalize();
    return rc;
}

int main(int argc, char **argv) {
    int provided, rank = 0, ranks = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    int a = 1, print_only = 0;
    if (a < argc && (!strcmp(argv[a], "-h") || !strcmp(argv[a], "--help"))) {
        if (rank == 0) usage(stdout);
        return finish(0);
    }
    if (a < argc && !strcmp(argv[a], "--print-config")) print_only = 1, a++;
    if (a >= argc) {
        if (rank == 0) usage(stderr);
        return finish(2);
    }
    config_t *cfg = malloc(sizeof *cfg);
    char err[1024];
    if (!cfg) return finish(1);
    config_defaults(cfg);
    int rc = config_load(cfg, argv[a], err, sizeof err);
    for (int i = a + 1; !rc && i < argc; i++) rc = config_override(cfg, argv[i], err, sizeof err);
    if (!rc) rc = config_validate(cfg, err, sizeof err);
    if (rc) {
        fprintf(stderr, "ddp-train: rank %d: %s\n", rank, err);
        free(cfg);
        return finish(2);
    }
    if (print_only) {
        if (rank == 0) config_write(cfg, stdout, 0);
        free(cfg);
        return finish(0);
    }
    if (ranks > 1) {
        /* the data-parallel engine is issue 4; independent replicas would
         * silently train P different models */
        if (rank == 0) fprintf(stderr, "ddp-train: %d ranks: data-parallel training is not built yet; run one process\n", ranks);
        free(cfg);
        return finish(2);
    }
    trainer_t t;
    rc = trainer_init(&t, cfg, rank, ranks, err, sizeof err);
    if (!rc) {
        if (rank == 0) {
            printf("ddp-train: %s: %zu parameters, %d training samples, batch %d x %d ranks, %ld steps\n", argv[a],
                   t.g->nweights, t.train.n, cfg->batch_size, ranks, t.total_steps);
            fflush(stdout);
        }
        rc = trainer_run(&t, err, sizeof err);
    }
    if (rc) fprintf(stderr, "ddp-train: rank %d: %s\n", rank, err);
    trainer_free(&t);
    free(cfg);
    return finish(rc ? 1 : 0);
}
