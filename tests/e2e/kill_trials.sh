#!/bin/bash
# Kill trials: a 3-rank training job with frequent checkpoints; in each trial
# a random rank gets kill -9 or SIGSTOP at a random moment (checkpoint writes
# included), then the job is resumed from its newest checkpoint. A trial
# passes when
#   - the job ends within ddp.timeout_s + 10 s of the signal, non-zero, and its
#     output names the rank,
#   - no process of the trial is left afterwards,
#   - the resumed run's final parameters are bitwise equal to an uninterrupted run's.
#   tests/e2e/kill_trials.sh [TRIALS] [SEED]   (make test: 3; docs/RELIABILITY.md: 20)
# Ends with "N passed, N failed" (one count per trial).
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
TRIALS=${1:-3}
SEED=${2:-$(( (RANDOM << 15) | RANDOM ))}
RANDOM=$SEED
export OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --bind-to none"
BIN=$BUILD/bin/ddp-train
TMP=$(mktemp -d)
# only the script itself cleans up: a subshell that inherits the trap must not
cleanup() { [ "$BASHPID" = "$$" ] || return 0; pkill -KILL -f "$TMP" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
TIMEOUT_S=3
STEPS=600
# 1.9 M parameters with AdamW: each checkpoint is 22 MB (written, CRC'd and
# fsynced by rank 0 every 5 steps), so a good share of random moments falls
# inside a write
JOB=(configs/bench-mlp1024.ini data.shape=1,28,28 data.classes=10 data.train_size=20000 data.test_size=100
     model.hidden=1024,1024 data.batch_size=16 train.max_steps=$STEPS train.eval_every=0 checkpoint.every_steps=5
     ddp.timeout_s=$TIMEOUT_S optim.name=adamw optim.lr=0.001 log.progress=off log.metrics=)
P=0 F=0
echo "kill trials: $TRIALS, seed $SEED (rerun: $0 $TRIALS $SEED)"

t0=$SECONDS
if ! timeout 300 $MPIRUN -np 3 "$BIN" "${JOB[@]}" checkpoint.dir="$TMP/ref-ck" log.params="$TMP/ref.bin" >"$TMP/ref.out" 2>&1; then
    echo "FAIL: the uninterrupted reference run failed"; tail -5 "$TMP/ref.out"
    echo "kill-trials: 0 passed, 1 failed"
    exit 1
fi
RUN_S=$((SECONDS - t0))
echo "reference: $STEPS steps in ${RUN_S}s"

trial=0 attempt=0
while [ $trial -lt "$TRIALS" ] && [ $attempt -lt $((2 * TRIALS + 5)) ]; do
    attempt=$((attempt + 1)) trial=$((trial + 1))
    d=$TMP/t$attempt
    mkdir -p "$d/pids"
    sig=$([ $((RANDOM % 2)) -eq 0 ] && echo KILL || echo STOP)
    victim=$((RANDOM % 3))
    # a moment between 0.5 s after start-up and 70% of the reference run, in ms
    span=$(( RUN_S * 700 - 500 > 1 ? RUN_S * 700 - 500 : 1 ))
    delay_ms=$(( 500 + (RANDOM * 32768 + RANDOM) % span ))
    DDP_PID_DIR="$d/pids" $MPIRUN -x DDP_PID_DIR -np 3 "$BIN" "${JOB[@]}" checkpoint.dir="$d/ck" >"$d/out" 2>&1 &
    job=$!
    for _ in $(seq 150); do [ -s "$d/pids/rank-$victim.pid" ] && break; sleep 0.1; done
    sleep "$(awk -v m="$delay_ms" 'BEGIN {printf "%.3f", m / 1000}')"
    pid=$(cat "$d/pids/rank-$victim.pid" 2>/dev/null)
    what="trial $trial: $sig rank $victim at ${delay_ms} ms"
    if ! kill -0 "$job" 2>/dev/null; then
        wait $job
        echo "again: $what: the job had already finished; not a trial"
        trial=$((trial - 1))
        continue
    fi
    ts=$SECONDS
    if [ $((trial % 4)) -eq 0 ]; then
        # every 4th trial: rank 0, the writer, in the middle of a checkpoint write
        victim=0 pid=$(cat "$d/pids/rank-0.pid")
        what="trial $trial: $sig rank 0 during a checkpoint write"
        python3 - "$d/ck" "$pid" "$sig" <<'PY'
import os, signal, sys, time
ck, pid, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, "SIG" + sys.argv[3])
end = time.time() + 30
while time.time() < end:
    try:
        if any(f.endswith(".tmp") for f in os.listdir(ck)):
            break
    except FileNotFoundError:
        pass
    time.sleep(0.0005)
os.kill(pid, sig)
PY
    else
        kill "-$sig" "$pid" 2>/dev/null
    fi
    bash -c "sleep $((TIMEOUT_S + 30)); kill -KILL $job 2>/dev/null" &
    guard=$!
    wait $job
    rc=$? dt=$((SECONDS - ts))
    kill $guard 2>/dev/null
    wait $guard 2>/dev/null
    sleep 1
    left=$(pgrep -f "$d/ck" | wc -l)
    pkill -KILL -f "$d/ck" 2>/dev/null # whatever is left must not disturb the next trial
    problems=""
    [ $rc -ne 0 ] || grep -q "ddp-train: $STEPS steps" "$d/out" || problems="$problems exit 0 without finishing;"
    [ $rc -ne 0 ] && [ $dt -gt $((TIMEOUT_S + 10)) ] && problems="$problems ended ${dt}s after the signal (limit $((TIMEOUT_S + 10)));"
    # named as the lost process (mpirun, kill -9) or as the silent peer (libcoll's timeout, SIGSTOP),
    # or as the rank that stopped answering during a checkpoint write
    [ $rc -ne 0 ] && ! grep -qE "process rank $victim\b|(from|to) rank $victim\b|ranks?( [0-9]+)* $victim( [0-9]+)* stopped answering" "$d/out" &&
        problems="$problems the output does not name rank $victim;"
    [ "$left" -ne 0 ] && problems="$problems $left process(es) left;"
    ckpt=$(ls "$d/ck"/ckpt-*.bin 2>/dev/null | tail -1)
    cut=$(ls -a "$d/ck" 2>/dev/null | grep -c '\.tmp$') # a write the signal interrupted
    if timeout 300 $MPIRUN -np 3 "$BIN" "${JOB[@]}" checkpoint.dir="$d/ck" log.params="$d/p.bin" >"$d/resume.out" 2>&1; then
        "$BUILD/tests/cmp-params" "$d/p.bin" "$TMP/ref.bin" 0 >"$d/cmp" || problems="$problems resumed result differs: $(cat "$d/cmp");"
    else
        problems="$problems the resumed run failed: $(tail -2 "$d/resume.out" | tr '\n' ' ');"
    fi
    from=$(grep -o "resumed from [^ ]* at step [0-9]*" "$d/resume.out" | sed 's/.*at step //')
    [ -z "$problems" ] && rm -rf "$d" # 44 MB of checkpoints each
    if [ -z "$problems" ]; then
        P=$((P + 1))
        echo "ok: $what: job ended (exit $rc) ${dt}s later naming rank $victim, nothing left, resumed from step ${from:-0} (newest ${ckpt##*/}$([ "$cut" -gt 0 ] && echo ", a checkpoint write was cut short")), bitwise equal"
    else
        F=$((F + 1))
        echo "FAIL: $what (exit $rc after ${dt}s):$problems"
        grep -E "rank [0-9]|error|Error" "$d/out" | head -6 | sed 's/^/    /'
    fi
done
echo "kill-trials: $P passed, $F failed"
[ $F -eq 0 ]
