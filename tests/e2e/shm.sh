#!/bin/bash
# Shared-memory collectives under faults (issue 11): a rank killed (kill -9) or
# stopped (SIGSTOP) in the middle of a stream of shared-memory all-reduces at 3
# ranks. The survivors fail with COLL_ERR_TIMEOUT naming it within the timeout,
# and nothing is left behind in /dev/shm (the workspaces are memfds, closed as
# soon as every peer has mapped them).
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
# --enable-recovery: mpirun leaves the survivors running when a rank dies, so
# they report the loss themselves (without it, it kills them at once)
MPIRUN="mpirun --oversubscribe --bind-to none --enable-recovery"
TMP=$(mktemp -d)
cleanup() { [ "$BASHPID" = "$$" ] || return 0; pkill -KILL -f "coll-bench -a shm -b 1M -e 1M -n 100000000" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; sed 's/^/    /' "$TMP/out" | tail -12; }

rank_pid() { # RANK: the pid of that rank of the running job
    for p in $(pgrep -f "coll-bench -a shm -b 1M -e 1M -n 100000000"); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && { echo "$p"; return; }
    done
}

lose() { # SIGNAL
    local sig=$1 before after
    before=$(ls /dev/shm | sort)
    COLL_TIMEOUT=3 timeout 60 $MPIRUN -x COLL_TIMEOUT -np 3 "$BUILD/bin/coll-bench" -a shm -b 1M -e 1M -n 100000000 -c 0 \
        >"$TMP/out" 2>&1 &
    local job=$! victim=""
    for _ in $(seq 100); do victim=$(rank_pid 1); [ -n "$victim" ] && break; sleep 0.1; done
    sleep 1.5
    local t0=$SECONDS
    [ -n "$victim" ] && kill "-$sig" "$victim"
    wait $job
    local rc=$? dt=$((SECONDS - t0))
    [ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null
    sleep 0.5
    after=$(ls /dev/shm | sort)
    local named
    named=$(grep -c "no progress from rank 1 for 3.0 s in a shared-memory allreduce" "$TMP/out")
    # (mpirun's own exit status says little with --enable-recovery: the survivors' words count)
    if [ -n "$victim" ] && [ "$named" -eq 2 ] && [ $dt -le 15 ] && [ "$before" = "$after" ]; then
        ok "rank 1 $sig mid-all-reduce: both survivors named it (COLL_ERR_TIMEOUT) within ${dt}s, /dev/shm as before"
    else
        no "rank 1 $sig: exit $rc after ${dt}s, named by $named survivors of 2, /dev/shm: $(diff <(echo "$before") <(echo "$after") | tr '\n' ' ')"
    fi
}
lose KILL
lose STOP
echo "shm-faults: $P passed, $F failed"
[ "$F" -eq 0 ]
