#!/bin/bash
# launch/ddprun --restarts: a 3-rank job whose rank 1 is killed (-9) mid-run
# is relaunched from its newest checkpoint, finishes with exit status 0, and
# its final parameters are bitwise those of an uninterrupted run. The restart's
# cost (work lost since the last checkpoint, start-up) is printed. A job that
# fails every time gives up after its restarts. Ends with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DDP_TRAIN=$BUILD/bin/ddp-train OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d)
cleanup() { [ "$BASHPID" = "$$" ] || return 0; pkill -KILL -f "$TMP" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; }
EVERY=20
JOB=(configs/bench-mlp1024.ini data.shape=1,16,16 data.classes=10 data.train_size=20000 data.test_size=100
     model.hidden=512,256 data.batch_size=16 train.max_steps=600 train.eval_every=0 checkpoint.every_steps=$EVERY
     ddp.timeout_s=5 optim.name=adamw optim.lr=0.001 log.progress=off log.every_steps=10)

r0=$(date +%s.%N)
launch/ddprun -np 3 -- "${JOB[@]}" checkpoint.dir="$TMP/ref-ck" log.metrics= log.params="$TMP/ref.bin" >"$TMP/ref.out" 2>&1 ||
    { no "the uninterrupted run failed: $(tail -3 "$TMP/ref.out")"; echo "restarts: $P passed, $F failed"; exit 1; }

sub() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a - b}'; }
ref_s=$(sub "$(date +%s.%N)" "$r0")
mkdir -p "$TMP/pids"
t0=$(date +%s.%N)
DDP_PID_DIR="$TMP/pids" launch/ddprun -np 3 --restarts 2 -x DDP_PID_DIR -- "${JOB[@]}" checkpoint.dir="$TMP/ck" \
    log.metrics="$TMP/m.jsonl" log.params="$TMP/p.bin" >"$TMP/out" 2>&1 &
job=$!
for _ in $(seq 100); do [ -s "$TMP/pids/rank-1.pid" ] && break; sleep 0.1; done
# mid-run: once a step record past the third checkpoint is out (a fixed sleep
# missed the whole run once the step got faster)
for _ in $(seq 300); do
    s=$(grep -o '"step":[0-9]*' "$TMP/m.jsonl" 2>/dev/null | tail -1 | cut -d: -f2)
    [ "${s:-0}" -ge 70 ] && break
    sleep 0.05
done
tk=$(date +%s.%N)
kill -KILL "$(cat "$TMP/pids/rank-1.pid")"
wait $job
rc=$?
run_s=$(sub "$(date +%s.%N)" "$t0")
if [ $rc -eq 0 ] && grep -q "ddprun: restart 1 of 2 after .*process rank 1" "$TMP/out" &&
    "$BUILD/tests/cmp-params" "$TMP/p.bin" "$TMP/ref.bin" 0 >"$TMP/cmp"; then
    ok "rank 1 killed: ddprun restarted the job, which finished (exit 0), bitwise equal to the uninterrupted run"
else no "restart after kill -9 (exit $rc): $(grep ddprun "$TMP/out" | tail -3) $(cat "$TMP/cmp" 2>/dev/null)"; fi
# the restart's cost: steps redone (since the last checkpoint) and the time from the kill to the resumed job's first step
resumed=$(grep -o "resumed from [^ ]* at step [0-9]*" "$TMP/out" | sed 's/.*at step //')
echo "restart cost: the job took ${run_s}s with the kill and restart, ${ref_s}s uninterrupted: $(sub "$run_s" "$ref_s") s more, for" \
    "resuming at step ${resumed:-?} (at most $EVERY steps since the last checkpoint redone) plus a new start-up"
grep -E "^ddprun: restart" "$TMP/out" | sed 's/^/    /'

# a job that fails every time gives up after its restarts, with its status
printf '[data]\nbatch_size = -1\n' >"$TMP/bad.ini"
launch/ddprun -np 2 --restarts 1 -- "$TMP/bad.ini" >"$TMP/out2" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "restart 1 of 1" "$TMP/out2" && grep -q "all 1 restart(s) are used up" "$TMP/out2"; then
    ok "a job that always fails gives up after --restarts 1 (exit $rc)"
else no "giving up (exit $rc): $(grep ddprun "$TMP/out2" | tail -2)"; fi
launch/ddprun -np 2 --restarts x -- cfg.ini >/dev/null 2>"$TMP/err" && no "--restarts x accepted" ||
    { grep -q -- "--restarts needs a count" "$TMP/err" && ok "a bad --restarts is a usage error" || no "--restarts x: $(cat "$TMP/err")"; }
echo "restarts: $P passed, $F failed"
[ $F -eq 0 ]
