/* The fault hooks of src/faults.h, linked only into build/tests/ddp-train-faults. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faults.h"

static long exit_at = -1, kill_at = -1, slow_s;
static char stop_stage[32];
static int stop_rank = -1;

static void load(void) {
    static int loaded;
    if (loaded) return;
    loaded = 1;
    const char *f = getenv("DDP_FAULT");
    long s;
    if (!f) return;
    if (sscanf(f, "exit@%ld", &s) == 1) exit_at = s;
    if (sscanf(f, "kill-in-checkpoint@%ld", &s) == 1) kill_at = s;
    if (sscanf(f, "slow-checkpoint=%ld", &s) == 1) slow_s = s;
    if (sscanf(f, "stop@%31[a-z-]:%d", stop_stage, &stop_rank) != 2) stop_rank = -1;
}

void fault_hook_stage(const char *stage, int rank) {
    load();
    if (rank == stop_rank && !strcmp(stage, stop_stage)) raise(SIGSTOP);
}

void fault_hook_step_done(long step) {
    load();
    if (step == exit_at) _exit(3);
}

void fault_hook_checkpoint_begin(long step) {
    (void)step;
    load();
    if (slow_s > 0) sleep((unsigned)slow_s);
}

void fault_hook_checkpoint_half_way(long step, FILE *f) {
    load();
    if (step != kill_at) return;
    fflush(f);
    raise(SIGKILL);
}
