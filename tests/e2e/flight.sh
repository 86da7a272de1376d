#!/bin/bash
# Flight recorder and straggler attribution, end to end:
#  - a stopped rank at 3 ranks (ddp-train, ddp.timeout_s=3): the survivors'
#    dumps appear within timeout + 5 s; the stopped rank is killed before it
#    can write one; launch/trace-report names it from the survivors' alone;
#  - a desync under COLL_CHECK=0 (tests/mpi/trace_scenarios): the report
#    names both calls; under COLL_CHECK=1 the mismatch itself writes them;
#  - SIGUSR1 to a healthy job: every rank writes its record and goes on, the
#    job ends with status 0;
#  - a rank's CPU throttled to about 1.3x (SIGSTOP/SIGCONT, 3 ms of every 13):
#    at least 80% of the step records name it with cause compute (the target
#    is 90%, measured over repeated runs in docs/RELIABILITY.md; one record
#    in ten can fall to this VM's noise); the same job unthrottled names
#    nobody in more than 5% of them; each such count is retried once when
#    it misses (section 4 says why).
# Ends with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
export OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --bind-to none"
BIN=$BUILD/bin/ddp-train
TMP=$(mktemp -d)
export VCLUSTER_NAME=ddpfl
cleanup() {
    [ "$BASHPID" = "$$" ] || return
    pkill -9 -f "$TMP" 2>/dev/null
    [ -n "${VC:-}" ] && launch/vcluster down >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $*"; }
no() { F=$((F + 1)); echo "FAIL: $*"; }
JOB=(configs/bench-mlp1024.ini ddp.zero=0 log.progress=off)

# the pid of rank R of a job whose command line contains MARK
rank_pid() { # MARK R
    local p
    for p in $(pgrep -f "$1"); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" && { echo "$p"; return; }
    done
}
# waits until FILE has a step record (training is under way), up to 60 s
wait_steps() {
    for _ in $(seq 600); do grep -q '"event":"step"' "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

# 1. a stopped rank
D=$TMP/stop
bash -c "$MPIRUN -np 3 $BIN ${JOB[*]} train.max_steps=100000 log.every_steps=10 ddp.timeout_s=3 log.trace_dir=$D \
    log.metrics=$TMP/stop.jsonl >$TMP/stop.log 2>&1" &
job=$!
if wait_steps "$TMP/stop.jsonl" && pid=$(rank_pid "log.trace_dir=$D" 1) && [ -n "$pid" ]; then
    kill -STOP "$pid"
    t0=$(date +%s.%N)
    for _ in $(seq 300); do [ "$(ls "$D" 2>/dev/null | wc -l)" -ge 2 ] && break; sleep 0.05; done
    dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    kill -9 "$pid" # before the launcher's teardown could let it write
    wait $job
    rep=$(launch/trace-report "$D" 2>&1)
    echo "$rep" | sed 's/^/    /'
    if [ ! -e "$D/coll-trace-r1-c0.jsonl" ] && echo "$rep" | grep -q "MISSING: rank 1 did not complete" &&
        awk -v d="$dt" 'BEGIN {exit !(d <= 8)}'; then
        ok "stopped rank 1 named from the survivors' dumps, written $dt s after the stop (timeout 3 s)"
    else
        no "stopped rank: dumps after $dt s, report above"
    fi
else
    kill $job 2>/dev/null; wait $job
    no "stopped rank: the job did not start ($(tail -3 "$TMP/stop.log"))"
fi

# 2. a desync: ranks call different collectives; under COLL_CHECK=0 they hang until
# COLL_TIMEOUT, under COLL_CHECK=1 the mismatch itself writes the records
desync() { # NAME CHECK TIMEOUT: runs the scenario, leaves the report in $rep and the dumps in $D
    D=$TMP/$1
    mkdir -p "$D"
    COLL_CHECK=$2 COLL_TIMEOUT=$3 COLL_TRACE_DIR=$D timeout 120 $MPIRUN -x COLL_CHECK -x COLL_TIMEOUT -x COLL_TRACE_DIR \
        -np 3 "$BUILD/tests/trace_scenarios" desync >"$TMP/$1.log" 2>&1
    rep=$(launch/trace-report "$D" 2>&1)
    echo "$rep" | sed 's/^/    /'
}
# (a rank the launcher kills while it is still writing may be missing: both calls are named all the same)
WANT="DESYNC at seq 10: rank 0 called allreduce\(count 1000, float32, sum\); ranks? (1|2|1, 2) called broadcast\(count 1000, float32, root 0\)"
desync desync 0 2
if echo "$rep" | grep -qE "$WANT"; then ok "desync: both calls named"; else no "desync: report above"; fi
desync mismatch 1 10
if grep -q '"reason":"mismatch"' "$D"/coll-trace-r*-c0.jsonl && echo "$rep" | grep -qE "$WANT"; then
    ok "mismatch (COLL_CHECK=1): dumps written at once, both calls named"
else
    no "mismatch: report above; $(grep -h '"type":"header"' "$D"/*.jsonl | cut -c1-160)"
fi

# 3. SIGUSR1 to a healthy job
D=$TMP/usr1
mkdir -p "$D"
bash -c "COLL_TRACE_DIR=$D timeout 120 $MPIRUN -x COLL_TRACE_DIR -np 2 $BUILD/tests/trace_scenarios healthy 4 >$TMP/usr1.log 2>&1" &
job=$!
sleep 2
for r in 0 1; do p=$(rank_pid "trace_scenarios healthy" $r); [ -n "$p" ] && kill -USR1 "$p"; done
wait $job
rc=$?
rep=$(launch/trace-report "$D" 2>&1)
echo "$rep" | sed 's/^/    /'
if [ $rc -eq 0 ] && [ "$(ls "$D" | wc -l)" -eq 2 ] && grep -q '"reason":"SIGUSR1"' "$D/coll-trace-r0-c0.jsonl" &&
    grep -q '"tag":"iteration' "$D/coll-trace-r1-c0.jsonl" && echo "$rep" | grep -q "LIVE (SIGUSR1 snapshots): every rank entered"; then
    ok "SIGUSR1: both ranks wrote their record, the job went on and ended with status 0"
else
    no "SIGUSR1: status $rc, files $(ls "$D")"
fi

# 4. straggler attribution: healthy, then one rank throttled to about 1.3x.
# These cases count verdicts over one run's 10 records, and this VM's host now and then
# slows a vCPU for seconds (real lateness; a CI run once failed the healthy and the
# throttled case together, where 9 runs here before and after named 0 of 90 healthy
# records and 90 of 90 throttled ones). A case that misses its bound is run once more,
# and the host's steal time of each try is printed: the second try decides, so a
# regression still fails (it misses twice), a noisy minute does not. The healthy case
# allows one named record of its 10, as the 2-node one does: in a slow phase of the
# host (one rank's step 26-46 ms from record to record, steal 3-4 jiffies) a CI run
# named 2 and then 1 (lateness 17.8 ms, real), where a false attribution names most.
named() { grep -c "\"slowest_rank\":$2,\"lateness_ms\":[0-9.]*,\"cause\":\"$3\"" "$1"; }
records() { grep -c '"event":"step"' "$1"; }
steal() { awk '/^cpu /{print $9}' /proc/stat; }
twice() { # NAME FUNC: FUNC sets $msg and returns its verdict; a miss is retried once
    local s0 s1 try
    for try in 1 2; do
        s0=$(steal) detail=
        if "$2" "$try"; then
            ok "$1: $msg"
            return
        fi
        s1=$(steal)
        echo "    try $try missed: $msg (host steal $((s1 - s0)) jiffies)"
        [ -n "${detail:-}" ] && sed 's/^/    /' "$detail" | cut -c1-300
        detail=
    done
    no "$1: $msg"
}
healthy1() {
    local m=$TMP/healthy$1.jsonl
    $MPIRUN -np 2 $BIN "${JOB[@]}" train.max_steps=500 log.every_steps=50 log.metrics="$m" >"$TMP/h.log" 2>&1
    local n fp
    n=$(records "$m") fp=$(grep -c '"slowest_rank":[0-9]' "$m")
    msg="$fp of $n step records name a straggler (at most 1)" detail=$m
    [ "$n" -eq 10 ] && [ "$fp" -le 1 ]
}
twice "healthy" healthy1

throttled1() {
    local m=$TMP/slow$1.jsonl
    bash -c "$MPIRUN -np 2 $BIN ${JOB[*]} train.max_steps=600 log.every_steps=50 log.metrics=$m >$TMP/s.log 2>&1" &
    local job=$! n hit
    if ! tests/e2e/throttle.py "log.metrics=$m" 1; then
        kill $job 2>/dev/null; wait $job
        msg="the job did not start"
        return 1
    fi
    wait $job
    # the records after the second (the first saw the start-up unthrottled; a
    # verdict is reported when the next record's window repeats it)
    tail -n +3 "$m" | grep '"event":"step"' >"$TMP/slow-steps"
    n=$(records "$TMP/slow-steps") hit=$(named "$TMP/slow-steps" 1 compute)
    msg="rank 1 named with cause compute in $hit of $n step records (at least 80%)" detail=$TMP/slow-steps
    [ "$n" -ge 5 ] && [ $((hit * 10)) -ge $((n * 8)) ] || return 1
    # the done record counts rank 1's straggling steps
    msg="$msg; done record: $(tail -1 "$m" | cut -c1-200)"
    grep -q '"straggler_compute_steps":\[[0-9]*,[1-9][0-9]*\]' "$m"
}
twice "throttled 1.3x, with the done record's count" throttled1

# 5. a slow link: 3 emulated nodes (one rank each) at 10 Gbit/s, node 3's link at 1 Gbit/s
# (three nodes are the fewest that can tell a node's link apart: with two, every transfer
# crosses both links); then all fast, where nobody may be named
if tests/e2e/vcluster.sh --probe; then
    VC=1
    link_run() { # OUT [SLOW_NODE [NODES [STEPS]]]
        launch/vcluster up "${3:-3}" --rate 10gbit >/dev/null || return 1
        [ -n "${2:-}" ] && { launch/vcluster rate "$2" 1gbit >/dev/null || return 1; }
        launch/vcluster run -- -np "${3:-3}" -x OPENBLAS_NUM_THREADS "$BIN" "${JOB[@]}" train.max_steps="${4:-300}" \
            log.every_steps=50 log.metrics="$1" >"$1.log" 2>&1
        local rc=$?
        launch/vcluster down >/dev/null
        return $rc
    }
    slowlink1() {
        local m=$TMP/link$1.jsonl n hit wrong
        link_run "$m" 3 3 600 || { msg="the run failed ($(tail -3 "$m.log"))"; return 1; }
        # (three ranks share two cores here: a record may name a compute straggler now and then;
        # counted from the third record, as the throttled cases: a name needs two windows, and
        # the first windows see TCP's start)
        grep '"event":"step"' "$m" | tail -n +3 >"$TMP/link-steps"
        n=$(records "$TMP/link-steps") hit=$(named "$TMP/link-steps" 2 link)
        wrong=$(grep -c '"slowest_rank":[01],"lateness_ms":[0-9.]*,"cause":"link"' "$m")
        msg="its rank 2 named with cause link in $hit of $n step records (at least 2/3), another rank as a link in $wrong"
        detail=$m
        [ $((hit * 3)) -ge $((n * 2)) ] && [ "$wrong" -eq 0 ]
    }
    twice "slow link of node 3" slowlink1
    # a rank's CPU throttled 1.3x across 2 nodes (one rank each: as many ranks as cores here;
    # three ranks on two cores are measured in docs/RELIABILITY.md), steps bound by the
    # network: named with cause compute (90% of the records measured over several runs;
    # 80% asked of one run, as on one node), never as a link; then the same 2 nodes
    # unthrottled, where nobody may be named
    xcpu1() {
        local m=$TMP/xcpu$1.jsonl n hit lk thr rc
        tests/e2e/throttle.py "log.metrics=$m" 1 &
        thr=$!
        link_run "$m" "" 2 500
        rc=$?
        kill $thr 2>/dev/null; wait $thr 2>/dev/null
        [ $rc -eq 0 ] || { msg="the run failed ($(tail -3 "$m.log"))"; return 1; }
        # (counted from the third record, as on one node: a name needs two windows)
        grep '"event":"step"' "$m" | tail -n +3 >"$TMP/xcpu-steps"
        n=$(records "$TMP/xcpu-steps") hit=$(named "$TMP/xcpu-steps" 1 compute) lk=$(grep -c '"cause":"link"' "$m")
        msg="named with cause compute in $hit of $n records (at least 80%), link in $lk" detail=$m
        [ $((hit * 10)) -ge $((n * 8)) ] && [ "$lk" -eq 0 ]
    }
    twice "across 2 nodes, rank 1's CPU throttled 1.3x" xcpu1
    fast2() {
        local m=$TMP/fast2-$1.jsonl n fp lk
        link_run "$m" "" 2 500 || { msg="the run failed"; return 1; }
        # (a name needs two windows; a slowdown of the host spanning two is real lateness:
        # at most 1 of 10 here, never a link)
        n=$(records "$m") fp=$(grep -c '"slowest_rank":[0-9]' "$m") lk=$(grep -c '"cause":"link"' "$m")
        msg="$fp of $n step records name a straggler (at most 10%), $lk a link" detail=$m
        [ $((fp * 10)) -le "$n" ] && [ "$lk" -eq 0 ]
    }
    twice "2 nodes, nobody throttled" fast2
    fast3() {
        local m=$TMP/fast3-$1.jsonl n fp
        link_run "$m" || { msg="the run failed"; return 1; }
        # a rank descheduled during the timed hop (three ranks on two cores) can look slow once
        n=$(records "$m") fp=$(grep -c '"cause":"link"' "$m")
        msg="$fp of $n step records name a slow link (at most 1)" detail=$m
        [ "$fp" -le 1 ]
    }
    twice "three fast links" fast3
else
    echo "skipped: the slow-link cases (network namespaces need root)"
fi
echo "flight: $P passed, $F failed"
[ "$F" -eq 0 ]
