#!/bin/bash
# The GPT on real text, end to end: configs/char-gpt.ini shrunk to 2 blocks of
# width 64 over 32 positions and 600 steps (about 10 s) must bring the
# validation loss of the fortune cookies below 2.7 nats per byte (the
# training split's byte frequencies alone give 3.38 on the validation split;
# the run measured 2.46); bits_per_byte must be val_loss / ln 2. The same at 2
# ranks with half the batch each. A residual MLP from a layer list learns
# Fashion-MNIST. A run resumed from a checkpoint ends bitwise equal. The text
# loader's bad input exits non-zero naming the file.
# Ends with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
BIN=$BUILD/bin/ddp-train
export OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; }
SMALL=(configs/char-gpt.ini model.n_layer=2 model.n_embd=64 model.block_size=32 train.max_steps=600
       optim.warmup_steps=20 log.progress=off)
BOUND=2.7

# val_ok FILE: the last eval record's val_loss is below BOUND and bits_per_byte matches it
val_ok() {
    python3 - "$1" "$BOUND" <<'PY'
import json, math, sys
ev = [r for r in map(json.loads, open(sys.argv[1])) if r["event"] == "eval"]
assert ev, "no eval record"
r = ev[-1]
assert abs(r["bits_per_byte"] - r["val_loss"] / math.log(2)) < 1e-3 * r["val_loss"], r
print("validation loss %.4f (%.3f bits per byte), bound %s" % (r["val_loss"], r["bits_per_byte"], sys.argv[2]))
sys.exit(0 if r["val_loss"] < float(sys.argv[2]) else 1)
PY
}

if timeout 300 "$BIN" "${SMALL[@]}" data.batch_size=16 log.metrics="$TMP/c1.jsonl" >"$TMP/c1.log" 2>&1 &&
    msg=$(val_ok "$TMP/c1.jsonl"); then ok "char-gpt, 1 rank: $msg"
else no "char-gpt, 1 rank: ${msg:-} $(tail -2 "$TMP/c1.log")"; fi
msg=
if timeout 300 mpirun --oversubscribe --bind-to none -np 2 "$BIN" "${SMALL[@]}" data.batch_size=8 \
    log.metrics="$TMP/c2.jsonl" >"$TMP/c2.log" 2>&1 && msg=$(val_ok "$TMP/c2.jsonl"); then ok "char-gpt, 2 ranks: $msg"
else no "char-gpt, 2 ranks: ${msg:-} $(tail -2 "$TMP/c2.log")"; fi

# checkpoints: a run resumed from its step-200 checkpoint ends bitwise equal to the uninterrupted run
RES=("${SMALL[@]}" data.batch_size=8 train.max_steps=300 train.eval_every=0 checkpoint.every_steps=100
     checkpoint.dir="$TMP/ck" log.metrics=)
if timeout 300 "$BIN" "${RES[@]}" log.params="$TMP/full.bin" >"$TMP/r1.log" 2>&1 && [ -e "$TMP/ck/ckpt-00000300.bin" ] &&
    rm "$TMP/ck/ckpt-00000300.bin" && timeout 300 "$BIN" "${RES[@]}" log.params="$TMP/resumed.bin" >"$TMP/r2.log" 2>&1 &&
    grep -q "resum" "$TMP/r2.log" && cmp -s "$TMP/full.bin" "$TMP/resumed.bin"; then
    ok "char-gpt resumed from step 200: parameters bitwise equal to the uninterrupted run"
else no "char-gpt resume: $(tail -2 "$TMP/r2.log" 2>/dev/null) $(ls "$TMP/ck" 2>/dev/null)"; fi

# a residual MLP from the layer-list syntax, one epoch
if timeout 300 "$BIN" configs/fmnist-resmlp.ini train.epochs=1 log.progress=off log.metrics="$TMP/r.jsonl" >"$TMP/r.log" 2>&1 &&
    acc=$(grep '"event":"eval"' "$TMP/r.jsonl" | tail -1 | sed -E 's/.*"test_acc":([0-9.]+).*/\1/') &&
    awk -v a="$acc" 'BEGIN {exit !(a >= 0.8)}'; then ok "residual MLP (fmnist-resmlp.ini), 1 epoch: test accuracy $acc"
else no "residual MLP: $(tail -2 "$TMP/r.log")"; fi

# bad input
expect_fail() { # NAME NEEDLE ARGS...
    local name=$1 needle=$2
    shift 2
    timeout 60 "$BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF -- "$needle" "$TMP/err"; then ok "$name"
    else no "$name (rc $rc, stderr: $(head -c 300 "$TMP/err"))"; fi
}
expect_fail "missing corpus named" "[data] path: $TMP/nothing: No such file or directory" "${SMALL[@]}" data.path="$TMP/nothing"
printf 'a short text' >"$TMP/short.txt"
expect_fail "a corpus shorter than a block named" "$TMP/short.txt: 12 bytes is too short for block_size 32" "${SMALL[@]}" \
    data.path="$TMP/short.txt"
mkdir "$TMP/empty"
expect_fail "a directory without text named" "$TMP/empty: no text files in this directory" "${SMALL[@]}" data.path="$TMP/empty"
expect_fail "text needs arch = gpt" "[data] dataset = text needs [model] arch = gpt" configs/fmnist-mlp.ini data.dataset=text
echo "char-gpt: $P passed, $F failed"
[ "$F" -eq 0 ]
