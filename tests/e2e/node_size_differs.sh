#!/bin/bash
# COLL_NODE_SIZE set differently on two ranks: coll_comm_init fails on every
# rank with an error naming the variable (no hang, no half-built hierarchy).
set -u
BENCH=${1:-build/bin/coll-bench}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(timeout 60 mpirun --oversubscribe --bind-to none -np 1 -x COLL_NODE_SIZE=1 "$BENCH" -b 8 -e 8 : \
    -np 1 -x COLL_NODE_SIZE=2 "$BENCH" -b 8 -e 8 2>&1)
rc=$?
n=$(echo "$out" | grep -c "coll_comm_init: COLL_NODE_SIZE differs between ranks (1 to 2)")
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$n" -eq 2 ]; then
    echo "ok: both ranks refuse differing COLL_NODE_SIZE (status $rc)"
    echo "node-size-differs: 1 passed, 0 failed"
else
    echo "FAIL: status $rc, $n ranks named the variable"; echo "$out" | tail -8
    echo "node-size-differs: 0 passed, 1 failed"
    exit 1
fi
