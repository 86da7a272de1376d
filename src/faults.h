/* Fault injection for the fault tests, compiled only into the test build
 * build/tests/ddp-train-faults (-DDDP_FAULT_HOOKS); the ddp-train users run
 * has none of this code. That build reads DDP_FAULT:
 *   exit@STEP               the process exits (status 3) after step STEP
 *   kill-in-checkpoint@STEP SIGKILL half-way through writing STEP's checkpoint
 *   slow-checkpoint=SECONDS rank 0 sleeps before each checkpoint write
 *   stop@STAGE:RANK         rank RANK stops itself (SIGSTOP) on reaching STAGE:
 *                           "setup" (the engine's set-up, right after the
 *                           start-up agreement) or "replica-check" (after
 *                           the last step) */
#ifndef DDP_FAULTS_H
#define DDP_FAULTS_H

#include <stdio.h>

#ifdef DDP_FAULT_HOOKS
void fault_hook_step_done(long step);
void fault_hook_checkpoint_begin(long step);
void fault_hook_checkpoint_half_way(long step, FILE *f);
void fault_hook_stage(const char *stage, int rank);
#define FAULT_HOOK_STEP_DONE(step) fault_hook_step_done(step)
#define FAULT_HOOK_CHECKPOINT_BEGIN(step) fault_hook_checkpoint_begin(step)
#define FAULT_HOOK_CHECKPOINT_HALF_WAY(step, f) fault_hook_checkpoint_half_way(step, f)
#define FAULT_HOOK_STAGE(stage, rank) fault_hook_stage(stage, rank)
#else
#define FAULT_HOOK_STEP_DONE(step) ((void)0)
#define FAULT_HOOK_CHECKPOINT_BEGIN(step) ((void)0)
#define FAULT_HOOK_CHECKPOINT_HALF_WAY(step, f) ((void)0)
#define FAULT_HOOK_STAGE(stage, rank) ((void)0)
#endif

#endif
