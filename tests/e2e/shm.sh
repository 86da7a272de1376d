#!/bin/bash
# Shared-memory collectives under faults (issue 11): a rank killed (kill -9) or
# stopped (SIGSTOP) in the middle of a stream of shared-memory all-reduces at 3
# ranks, of broadcasts and all-gathers at 2 (single copies between the ranks'
# buffers), and of hierarchical all-reduces at 4 (2 emulated nodes of 2,
# COLL_NODE_SIZE).
# The survivors fail with COLL_ERR_TIMEOUT within the timeout, those waiting on
# it directly naming it, and nothing is left behind in /dev/shm (the workspaces
# are memfds, closed as soon as every peer has mapped them).
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
# --enable-recovery: mpirun leaves the survivors running when a rank dies, so
# they report the loss themselves (without it, it kills them at once)
MPIRUN="mpirun --oversubscribe --bind-to none --enable-recovery"
TMP=$(mktemp -d)
JOB="-b 1M -e 1M -n 100000000" # the marker of this script's jobs
cleanup() { [ "$BASHPID" = "$$" ] || return 0; pkill -KILL -f -- "$JOB" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; sed 's/^/    /' "$TMP/out" | tail -12; }

rank_pid() { # RANK: the pid of that rank of the running job
    for p in $(pgrep -f -- "$JOB"); do
        tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && { echo "$p"; return; }
    done
}

lose() { # SIGNAL RANKS ALGO VICTIM NAMING [OP]: NAMING survivors must name VICTIM
    local sig=$1 np=$2 algo=$3 v=$4 want=$5 op=${6:-allreduce} before after
    before=$(ls /dev/shm | sort)
    COLL_TIMEOUT=3 COLL_NODE_SIZE=2 timeout 60 $MPIRUN -x COLL_TIMEOUT -x COLL_NODE_SIZE ${COLL_SHM_FAR:+-x COLL_SHM_FAR} -np "$np" "$BUILD/bin/coll-bench" -o "$op" -a "$algo" $JOB -c 0 \
        >"$TMP/out" 2>&1 &
    local job=$! victim=""
    for _ in $(seq 100); do victim=$(rank_pid "$v"); [ -n "$victim" ] && break; sleep 0.1; done
    sleep 1.5
    local t0=$SECONDS
    [ -n "$victim" ] && kill "-$sig" "$victim"
    wait $job
    local rc=$? dt=$((SECONDS - t0))
    [ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null
    sleep 0.5
    after=$(ls /dev/shm | sort)
    local named failed
    # (a single copy from or to a killed rank's memory finds its process gone at once)
    named=$(grep -cE "no progress (from|on a (send to|receive from)) rank $v (for 3.0 s|in a shared-memory .*: its process is gone)" "$TMP/out")
    failed=$(grep -c "COLL_ERR_TIMEOUT\|no progress" "$TMP/out")
    # (mpirun's own exit status says little with --enable-recovery: the survivors' words count)
    if [ -n "$victim" ] && [ "$named" -ge "$want" ] && [ "$failed" -ge $((np - 1)) ] && [ $dt -le 15 ] && [ "$before" = "$after" ]; then
        ok "$algo $op, $np ranks: rank $v $sig mid-call: $named survivors named it (COLL_ERR_TIMEOUT) within ${dt}s, /dev/shm as before"
    else
        no "$algo $op, $np ranks: rank $v $sig: exit $rc after ${dt}s, named by $named survivors (want $want), $failed failure lines, /dev/shm: $(diff <(echo "$before") <(echo "$after") | tr '\n' ' ')"
    fi
}
lose KILL 3 shm 1 2
lose STOP 3 shm 1 2
# 2 ranks: broadcast and all-gather copy between the ranks' buffers (CMA)
lose KILL 2 shm 1 1 broadcast
lose STOP 2 shm 0 1 broadcast
lose KILL 2 shm 0 1 allgather
# 2 ranks: the reduce's pieces through memory (reduce_stream): the root waits for
# the non-root's pieces, the non-root for the root to be done with its regions
lose KILL 2 shm 1 1 reduce
lose STOP 2 shm 0 1 reduce
# 2 ranks, the cores taken as far apart: all-reduce and reduce stream through memory
COLL_SHM_FAR=1 lose KILL 2 shm 1 1 allreduce
COLL_SHM_FAR=1 lose STOP 2 shm 0 1 allreduce
COLL_SHM_FAR=1 lose KILL 2 shm 0 1 reduce
# hier: rank 2's node mate (shared memory) and its partner across the nodes
# (rank 0) wait on it directly; rank 1 may wait on rank 3 first
lose KILL 4 hier 2 2
lose STOP 4 hier 2 2
echo "shm-faults: $P passed, $F failed"
[ "$F" -eq 0 ]
