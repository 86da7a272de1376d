#!/bin/bash
# Data-parallel equivalence: after K steps, the parameters trained on P ranks
# with per-rank batch B/P equal those of 1 rank with batch B (same global
# batch, same data order), for overlap on and off, several bucket sizes,
# gradient accumulation and ZeRO-1, with SGD and AdamW.
#
# Tolerance: max |difference| <= 2e-5 x max |parameter| after 15 steps. The
# runs differ only in float32 rounding (a mean of per-rank means is not
# bitwise the global mean); a wrong shard, bucket or scale gives errors of
# order 1e-2 or more. ZeRO-1 against the same rank count without it must be
# bitwise equal at 2 ranks (a sum of two terms does not depend on order), and
# at 2 and 3 ranks between the fused update (ddp.fused_update, zero = 0 on one
# node: means summed in rank order) and shared memory's collectives; each
# run's metrics must name the path it took.
# Ends with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
export OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --bind-to none"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
TOL=2e-5
P=0 F=0
# a small MLP on synthetic data: 64 inputs, 5 classes, 15 steps of 12 samples
BASE=(configs/bench-mlp1024.ini ddp.zero=0 data.shape=1,8,8 data.classes=5 data.train_size=1200 data.test_size=100
      model.hidden=32,16 optim.lr=0.05 train.max_steps=15 train.eval_every=0 log.progress=off)

train() { # OUT NP ARGS...: trains, writes final parameters to OUT
    local out=$1 np=$2 want=fused got
    shift 2
    timeout 120 $MPIRUN -np "$np" "$BUILD/bin/ddp-train" "${BASE[@]}" log.metrics="$TMP/m.jsonl" log.params="$out" "$@" \
        >"$TMP/log" 2>&1 || { echo "run failed: np=$np $*"; tail -5 "$TMP/log"; return 1; }
    # the path the run took: fused with zero = 0 on one node, where asked (on) or
    # where the ranks fill the cores (auto; one BLAS thread each here)
    case " $* " in
    *zero=1*|*fused_update=off*|*algorithm=ring*|*algorithm=rd*|*algorithm=native*) want=collectives ;;
    *fused_update=on*) ;;
    *) [ "$np" -ge "$(getconf _NPROCESSORS_ONLN)" ] || want=collectives ;;
    esac
    [ "$np" = 1 ] && want=
    got=$(tail -1 "$TMP/m.jsonl" | sed -n 's/.*"sync":"\([a-z]*\)".*/\1/p')
    [ "$got" = "$want" ] || { echo "np=$np $*: took '$got', expected '$want'" | tee "$TMP/cmp"; return 1; }
}

# check NAME REF TOL NP ARGS...
check() {
    local name=$1 ref=$2 tol=$3 np=$4
    shift 4
    if train "$TMP/p.bin" "$np" "$@" && "$BUILD/tests/cmp-params" "$TMP/p.bin" "$ref" "$tol" >"$TMP/cmp"; then
        P=$((P + 1)); echo "ok: $name: $(cat "$TMP/cmp")"
    else
        F=$((F + 1)); echo "FAIL: $name: $(cat "$TMP/cmp" 2>/dev/null)"
    fi
}

for opt in sgd adamw; do
    o=(optim.name=$opt)
    [ $opt = adamw ] && o+=(optim.lr=0.003 optim.weight_decay=0.01)
    train "$TMP/ref-$opt.bin" 1 data.batch_size=12 "${o[@]}" || { echo "FAIL: reference run"; F=$((F + 1)); continue; }
    ref="$TMP/ref-$opt.bin"
    for np in 2 3 4; do
        b=$((12 / np))
        check "$opt np=$np overlap, 1 MiB buckets" "$ref" $TOL $np data.batch_size=$b "${o[@]}"
        # buckets where the fused update is off (it has none)
        check "$opt np=$np overlap, 1 KiB buckets" "$ref" $TOL $np data.batch_size=$b ddp.bucket_mb=0.001 ddp.fused_update=off "${o[@]}"
        check "$opt np=$np no overlap" "$ref" $TOL $np data.batch_size=$b ddp.overlap=false ddp.fused_update=off "${o[@]}"
        check "$opt np=$np zero=1, 4 KiB buckets" "$ref" $TOL $np data.batch_size=$b ddp.zero=1 ddp.bucket_mb=0.004 ddp.fused_update=off "${o[@]}"
        check "$opt np=$np fused update" "$ref" $TOL $np data.batch_size=$b ddp.fused_update=on "${o[@]}"
    done
    check "$opt np=2 accumulate=2" "$ref" $TOL 2 data.batch_size=3 ddp.accumulate=2 "${o[@]}"
    check "$opt np=3 accumulate=2 zero=1" "$ref" $TOL 3 data.batch_size=2 ddp.accumulate=2 ddp.zero=1 "${o[@]}"
    check "$opt np=1 accumulate=3" "$ref" $TOL 1 data.batch_size=4 ddp.accumulate=3 "${o[@]}"
    # ZeRO-1 against plain all-reduce at 2 ranks: bitwise
    train "$TMP/np2-$opt.bin" 2 data.batch_size=6 ddp.fused_update=off "${o[@]}" &&
        check "$opt np=2 zero=1 bitwise equals zero=0" "$TMP/np2-$opt.bin" 0 2 data.batch_size=6 ddp.zero=1 ddp.fused_update=off "${o[@]}"
    # the fused update's mean, (a + b) / 2 and ((a + b) + c) / 3, is shared
    # memory's AVG: bitwise equal to the collectives at 2 and 3 ranks
    check "$opt np=2 fused bitwise equals the collectives" "$TMP/np2-$opt.bin" 0 2 data.batch_size=6 ddp.fused_update=on "${o[@]}"
    train "$TMP/np3-$opt.bin" 3 data.batch_size=4 ddp.fused_update=off "${o[@]}" &&
        check "$opt np=3 fused bitwise equals the collectives" "$TMP/np3-$opt.bin" 0 3 data.batch_size=4 ddp.fused_update=on "${o[@]}"
done
# every algorithm gives the same model (ring, recursive doubling, MPI's own)
for a in ring rd native; do
    check "sgd np=3 algorithm=$a" "$TMP/ref-sgd.bin" $TOL 3 data.batch_size=4 ddp.algorithm=$a
done
# a GPT (residuals, a tied embedding, attention) on a synthetic token stream, AdamW:
# 2 and 4 ranks against 1 with the same global batch of 12 windows
GPT=(model.arch=gpt model.n_layer=2 model.n_head=2 model.n_embd=16 model.block_size=8 data.dataset=synthetic
     data.classes=11 data.train_size=3000 optim.name=adamw optim.lr=0.003 optim.weight_decay=0.01)
if train "$TMP/ref-gpt.bin" 1 data.batch_size=12 "${GPT[@]}"; then
    check "gpt np=2" "$TMP/ref-gpt.bin" $TOL 2 data.batch_size=6 "${GPT[@]}"
    check "gpt np=4, 1 KiB buckets" "$TMP/ref-gpt.bin" $TOL 4 data.batch_size=3 ddp.bucket_mb=0.001 ddp.fused_update=off "${GPT[@]}"
    check "gpt np=4 zero=1" "$TMP/ref-gpt.bin" $TOL 4 data.batch_size=3 ddp.zero=1 "${GPT[@]}"
    train "$TMP/ref-gpt-untied.bin" 1 data.batch_size=12 model.tie_embeddings=false "${GPT[@]}" &&
        check "gpt np=3 no overlap, untied" "$TMP/ref-gpt-untied.bin" $TOL 3 data.batch_size=4 ddp.overlap=false \
            model.tie_embeddings=false "${GPT[@]}"
else
    F=$((F + 1)); echo "FAIL: gpt reference run"
fi
echo "ddp-equivalence: $P passed, $F failed"
[ "$F" -eq 0 ]
