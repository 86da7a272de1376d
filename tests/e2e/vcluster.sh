#!/bin/bash
# The emulated cluster and the scaling driver:
#  - launch/vcluster up 2 --rate 1gbit; ranks land on different nodes; a short
#    training run across the nodes gives exactly the loss records of the same
#    run on one node, and its traffic crossed the shaped link;
#  - launch/vcluster down leaves no namespace, link, qdisc or state behind,
#    also after a failed run;
#  - launch/scaling on a tiny configuration writes a CSV with the named columns
#    and one PNG per plot, on one node and across the cluster.
# `vcluster.sh --probe` exits 0 when network namespaces can be made here.
# Ends with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
export VCLUSTER_NAME=ddpvct OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export DDP_TRAIN=$BUILD/bin/ddp-train
if [ "${1:-}" = --probe ]; then # everything the cluster needs, tried once
    ip netns add ddpvct-probe 2>/dev/null || exit 1
    ip -n ddpvct-probe link add vprobe0 type veth peer name vprobe1 2>/dev/null &&
        ip -n ddpvct-probe link set vprobe0 up 2>/dev/null &&
        ip netns exec ddpvct-probe tc qdisc add dev vprobe0 root tbf rate 1gbit burst 65536 latency 20ms 2>/dev/null &&
        ip netns exec ddpvct-probe unshare --uts /bin/sh -c 'hostname probe' 2>/dev/null
    rc=$?
    ip netns delete ddpvct-probe
    exit $rc
fi
TMP=$(mktemp -d)
trap 'launch/vcluster down >/dev/null 2>&1; rm -rf "$TMP"' EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; }

leftovers() { # what a cluster named ddpvct could leave behind
    ip netns list | grep -E '^ddpvct-' || true
    [ -e /run/ddpvct ] && echo "/run/ddpvct"
    ip -o link | grep -E '^[0-9]+: (p[0-9]+|br0)[@:]' || true # the switch ports, should one escape its namespace
}

RUN=(configs/bench-mlp1024.ini data.shape=1,8,8 data.classes=5 data.train_size=2400 model.hidden=32,16
     data.batch_size=16 train.max_steps=40 train.eval_every=1 log.every_steps=5 log.progress=off)
losses() { grep '"event":"step"' "$1" | sed -E 's/.*"loss":([^,]*),.*/\1/' | tr '\n' ' '; }

if launch/vcluster up 2 --rate 1gbit >"$TMP/up" 2>&1; then ok "up 2 --rate 1gbit"; else no "up: $(cat "$TMP/up")"; fi
tc -n ddpvct-n1 qdisc show dev eth0 | grep -q "tbf.*rate 1Gbit" && ok "node links shaped by tbf" || no "no tbf on node 1"
hosts=$(timeout 60 launch/vcluster run -- -np 2 hostname 2>/dev/null | sort | tr '\n' ' ')
[ "$hosts" = "ddpvct-n1 ddpvct-n2 " ] && ok "ranks on different nodes ($hosts)" || no "ranks on nodes: '$hosts'"

before=$(tc -s -n ddpvct-n1 qdisc show dev eth0 | awk '/Sent/ {print $2}')
if timeout 300 launch/vcluster run -- -np 2 -x OPENBLAS_NUM_THREADS "$DDP_TRAIN" "${RUN[@]}" log.metrics="$TMP/cross.jsonl" \
    >"$TMP/cross.out" 2>&1 &&
    timeout 120 launch/ddprun -np 2 -- "${RUN[@]}" log.metrics="$TMP/local.jsonl" >"$TMP/local.out" 2>&1; then
    after=$(tc -s -n ddpvct-n1 qdisc show dev eth0 | awk '/Sent/ {print $2}')
    a=$(losses "$TMP/cross.jsonl") b=$(losses "$TMP/local.jsonl")
    if [ -n "$a" ] && [ "$a" = "$b" ]; then ok "training across 2 nodes: same loss records as on one node ($(echo $a | wc -w) records)"
    else no "loss records differ: across '$a' vs local '$b'"; fi
    # 40 all-reduces of 2693 floats (10.8 kB) each at least
    [ $((after - before)) -gt 400000 ] && ok "the run's traffic crossed the shaped link ($((after - before)) bytes)" ||
        no "only $((after - before)) bytes crossed node 1's link"
else
    no "training across nodes failed: $(tail -5 "$TMP/cross.out" "$TMP/local.out")"
fi
# a failing run across the cluster ends, and down still cleans up
if timeout 120 launch/vcluster run -- -np 2 "$DDP_TRAIN" "${RUN[@]}" optim.lr=bad >"$TMP/fail.out" 2>&1; then
    no "a bad run across nodes succeeded"
else grep -q "override 'optim.lr=bad'" "$TMP/fail.out" && ok "a failing run across nodes reports its error" || no "failing run: $(tail -3 "$TMP/fail.out")"; fi
launch/vcluster down >/dev/null 2>&1
left=$(leftovers)
[ -z "$left" ] && ok "down leaves nothing behind" || no "left behind: $left"
launch/vcluster down >/dev/null 2>&1 && ok "down twice is harmless" || no "second down failed"
launch/vcluster up 0 >/dev/null 2>&1 && no "up 0 accepted" || ok "up 0 is refused"
launch/vcluster up 2 --rate fast >/dev/null 2>&1 && no "--rate fast accepted" || ok "a bad --rate is refused"
[ -z "$(leftovers)" ] && ok "refused ups leave nothing" || no "refused up left: $(leftovers)"

# the scaling driver, one node and across the cluster
check_out() { # DIR NAME
    local cols="ranks,nodes,link_rate,algorithm,overlap,median_step_ms,compute_ms,comm_ms,exposed_comm_ms,samples_per_s,efficiency"
    if head -1 "$1/results.csv" | grep -q "^$cols" && [ "$(wc -l <"$1/results.csv")" -ge 3 ] &&
        for p in throughput efficiency breakdown; do head -c 8 "$1/$p.png" | od -An -c | grep -q 'P   N   G' || exit 1; done; then
        ok "$2: CSV with the named columns and three PNGs"
    else no "$2: $(ls "$1" 2>&1) $(head -3 "$1/results.csv" 2>&1)"; fi
}
TINY=(configs/bench-mlp1024.ini data.shape=1,8,8 data.classes=5 data.train_size=2400 model.hidden=16 data.batch_size=8)
timeout 300 launch/scaling --mode weak --ranks 1,2 --overlap on,off --steps 30 --out "$TMP/s1" -- "${TINY[@]}" >"$TMP/s1.out" 2>&1
check_out "$TMP/s1" "scaling weak, one node"
timeout 300 launch/scaling --mode strong --ranks 1,2 --rate 1gbit --steps 20 --out "$TMP/s2" -- "${TINY[@]}" >"$TMP/s2.out" 2>&1
check_out "$TMP/s2" "scaling strong, across 2 nodes"
grep -q '^2,2,1gbit,auto,on,' "$TMP/s2/results.csv" && ok "the 2-rank point ran on 2 nodes" || no "no 2-node row: $(cat "$TMP/s2/results.csv")"
# bad input to the driver: a message and status 2, before anything runs
for bad in "--rate 1gbps" "--ranks 1,x" "--mode fast"; do
    launch/scaling $bad -- "${TINY[@]}" >"$TMP/bad.out" 2>&1
    [ $? -eq 2 ] && [ -s "$TMP/bad.out" ] && ok "scaling $bad is refused" || no "scaling $bad: $(cat "$TMP/bad.out")"
done
VCLUSTER_NAME=ddpsc
[ -z "$(ip netns list | grep -E '^ddpsc-')" ] && ok "the driver took its cluster down" || no "the driver left namespaces"

echo "vcluster: $P passed, $F failed"
[ "$F" -eq 0 ]
