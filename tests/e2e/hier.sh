#!/bin/bash
# Hierarchical collectives across emulated nodes (issue 11): 2 launch/vcluster
# nodes x 2 ranks, so node detection is Open MPI's own (MPI_COMM_TYPE_SHARED)
# and the cross-node stage runs over TCP on the shaped links:
#  - every rank sets up hier (2 nodes x 2 ranks);
#  - the collective matrix (every algorithm, hier included, and auto, which
#    picks hier here) with ordinary and coll_mem_alloc buffers;
#  - coll-bench's own result check on hier all-reduce, broadcast and reduce;
#  - the cluster is taken down.
# Skipped by make test where network namespaces cannot be made.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
export VCLUSTER_NAME=ddpvh OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d)
trap 'launch/vcluster down >/dev/null 2>&1; rm -rf "$TMP"' EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; sed 's/^/    /' "$TMP/out" 2>/dev/null | tail -12; }
vrun() { timeout 600 launch/vcluster run -- "$@" >"$TMP/out" 2>&1; }

if ! launch/vcluster up 2 --rate 10gbit >"$TMP/out" 2>&1; then no "vcluster up"; echo "hier: $P passed, $F failed"; exit 1; fi
if vrun -x COLL_DEBUG=INFO -np 4 "$BUILD/tests/test_coll" matrix -s small; then
    n=$(grep -c "COLL INFO hier: 2 nodes x 2 ranks$" "$TMP/out")
    [ "$n" -ge 8 ] && ok "every rank's contexts run hier as 2 nodes x 2 ranks ($n)" || no "hier set up $n times"
    ok "matrix across 2 nodes x 2 ranks: $(grep -o '[0-9]* passed, 0 failed' "$TMP/out")"
else
    no "matrix across 2 nodes x 2 ranks"
fi
# across nodes the ring's chunks are COLL_NET_CHUNK_BYTES: tiny ones cut every
# block of the matrix into many messages on the links
if vrun -x COLL_DEBUG=INFO -x COLL_NET_CHUNK_BYTES=256 -np 4 "$BUILD/tests/test_coll" matrix -s small &&
    [ "$(grep -c 'init: 4 ranks.*chunk=256 ' "$TMP/out")" -ge 1 ]; then
    ok "matrix across the nodes with 256-byte net chunks: $(grep -o '[0-9]* passed, 0 failed' "$TMP/out")"
else
    no "matrix with COLL_NET_CHUNK_BYTES=256 (or the comm did not report chunk=256)"
fi
vrun -np 4 "$BUILD/tests/test_coll" matrix -s small -m 1 && ok "matrix with coll_mem_alloc buffers across the nodes" ||
    no "matrix -m 1 across the nodes"
for o in allreduce broadcast reduce; do
    if vrun -np 4 "$BUILD/bin/coll-bench" -o $o -a hier -b 4 -e 4M -f 32 -n 2 -w 1 -R 1 -c 1 &&
        awk '$1 ~ /^[0-9]+$/ && $8 != 0 { bad = 1 } END { exit bad }' "$TMP/out"; then
        ok "coll-bench -o $o -a hier: every result checked"
    else
        no "coll-bench -o $o -a hier"
    fi
done
launch/vcluster down >/dev/null 2>&1
[ -z "$(ip netns list | grep -E '^ddpvh-')" ] && ok "down leaves no namespace" || no "namespaces left"
echo "hier: $P passed, $F failed"
[ "$F" -eq 0 ]
