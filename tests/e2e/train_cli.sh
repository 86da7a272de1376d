#!/bin/bash
# End-to-end checks of build/bin/ddp-train as a user runs it: shipped configs
# parse, short real runs learn and write well-formed metrics, bad input exits
# non-zero with a message naming the problem. Ends with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
BIN=$BUILD/bin/ddp-train
export OPENBLAS_NUM_THREADS=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; }

# expect_fail NAME NEEDLE ARGS...: exits non-zero within 60 s, stderr has NEEDLE
expect_fail() {
    local name=$1 needle=$2
    shift 2
    timeout 60 "$BIN" "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF -- "$needle" "$TMP/err"; then ok "$name"
    else no "$name (rc $rc, stderr: $(head -c 300 "$TMP/err"))"; fi
}

# metrics_ok FILE STEPS: every line is a JSON object; the last is done with STEPS
metrics_ok() {
    python3 - "$1" "$2" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert lines, "empty metrics"
for r in lines:
    assert r["event"] in ("step", "eval", "done"), r
    need = {"step": ["step", "epoch", "loss", "step_ms", "lr"], "eval": ["epoch", "test_acc", "test_loss"],
            "done": ["ranks", "steps", "median_step_ms", "samples_per_s", "test_acc", "wall_s"]}[r["event"]]
    for k in need:
        assert k in r, (k, r)
d = lines[-1]
assert d["event"] == "done" and d["steps"] == int(sys.argv[2]), d
assert d["median_step_ms"] > 0 and d["samples_per_s"] > 0, d
print("done:", json.dumps(d))
PY
}

for c in configs/*.ini; do
    if "$BIN" --print-config "$c" >"$TMP/cfg" 2>&1 && grep -q '^\[model\]' "$TMP/cfg"; then ok "parses $c"
    else no "parses $c: $(cat "$TMP/cfg")"; fi
done

# the speed benchmark config, shortened
if "$BIN" configs/bench-mlp1024.ini train.max_steps=30 log.metrics="$TMP/b.jsonl" log.progress=off >"$TMP/out" 2>&1 &&
    metrics_ok "$TMP/b.jsonl" 30; then ok "bench-mlp1024 runs 30 steps"
else no "bench-mlp1024 runs 30 steps: $(tail -5 "$TMP/out")"; fi

# the default job on the real dataset, 300 steps: must already beat 70%
if [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if "$BIN" configs/fmnist-mlp.ini train.max_steps=300 log.metrics="$TMP/m.jsonl" log.progress=off >"$TMP/out" 2>&1 &&
        metrics_ok "$TMP/m.jsonl" 300 >"$TMP/done" &&
        python3 -c "import json,sys; d=json.loads(open('$TMP/m.jsonl').readlines()[-1]); sys.exit(d['test_acc'] < 0.70)"; then
        ok "fmnist-mlp 300 steps: $(cat "$TMP/done")"
    else no "fmnist-mlp 300 steps: $(tail -5 "$TMP/out") $(tail -1 "$TMP/m.jsonl")"; fi
    # the CNN and a custom layer list run a few steps (shapes, conv, dropout)
    if "$BIN" configs/fmnist-cnn.ini train.max_steps=5 train.eval_every=0 log.metrics="$TMP/c.jsonl" log.progress=off >"$TMP/out" 2>&1 &&
        metrics_ok "$TMP/c.jsonl" 5 >/dev/null; then ok "fmnist-cnn 5 steps"
    else no "fmnist-cnn 5 steps: $(tail -5 "$TMP/out")"; fi
else
    no "Fashion-MNIST is not installed (make test installs dataset-fashion-mnist)"
fi
if "$BIN" configs/bench-mlp1024.ini model.arch=layers "model.layers=conv(4,3,2) gelu maxpool(2) linear(32) tanh dropout(0.1) linear(10)" \
    optim.name=adamw optim.lr=0.001 optim.schedule=cosine optim.warmup_steps=5 train.max_steps=40 train.eval_every=1 \
    log.metrics="$TMP/l.jsonl" log.progress=off >"$TMP/out" 2>&1 && metrics_ok "$TMP/l.jsonl" 40 >/dev/null; then
    ok "custom layer list with adamw and cosine"
else no "custom layer list: $(tail -5 "$TMP/out")"; fi

# bad input: non-zero exit and a message naming the problem
printf '[optim]\nlr = 0.1\nlearning_rate = 3\n' >"$TMP/bad.ini"
expect_fail "unknown key names file:line" "$TMP/bad.ini:3: [optim] learning_rate: unknown key" "$TMP/bad.ini"
expect_fail "bad override is named" "override 'optim.lr=x': [optim] lr: expected a number" configs/fmnist-mlp.ini optim.lr=x
expect_fail "missing dataset names the package" "apt-get install dataset-fashion-mnist" configs/fmnist-mlp.ini data.dir="$TMP/none"
expect_fail "missing config file" "$TMP/nope.ini: No such file or directory" "$TMP/nope.ini"
expect_fail "bad layer list" "[model] layers: unknown layer 'lstm'" configs/bench-mlp1024.ini model.arch=layers "model.layers=lstm(3)"
expect_fail "batch larger than the data" "[data] batch_size: 100000 x 1 ranks x 1 accumulation steps is larger than the training set" configs/bench-mlp1024.ini data.batch_size=100000
touch "$TMP/file"
expect_fail "metrics path not creatable" "[log] metrics: cannot create $TMP/file: a file of that name is in the way" configs/bench-mlp1024.ini log.metrics="$TMP/file/dir/m.jsonl"
# missing parent directories of every output are created (a fresh shared file system)
if timeout 60 "$BIN" configs/bench-mlp1024.ini train.max_steps=3 log.progress=off log.metrics="$TMP/new/a/m.jsonl" \
    log.params="$TMP/new/b/p.bin" checkpoint.dir="$TMP/new/c/ck" >/dev/null 2>&1 &&
    [ -s "$TMP/new/a/m.jsonl" ] && [ -s "$TMP/new/b/p.bin" ] && ls "$TMP/new/c/ck"/ckpt-00000003.bin >/dev/null; then
    ok "missing parent directories of metrics, params and checkpoint.dir are created"
else no "missing parent directories: $(find "$TMP/new" 2>&1 | head -5)"; fi
expect_fail "no arguments prints usage" "usage: ddp-train" 
expect_fail "bad [train] gpu is named" "[train] gpu: expected auto or a device index, got 'x'" configs/bench-mlp1024.ini train.gpu=x
expect_fail "bad [train] device is named" "[train] device: expected one of cpu|cuda, got 'tpu'" configs/bench-mlp1024.ini train.device=tpu

# device = cuda where no GPU is usable: every rank names the CUDA error (or
# the missing CUDA build) and exits 2, before any collective
if nvidia-smi -L >/dev/null 2>&1; then
    echo "skip: device = cuda without a GPU (this machine has one)"
else
    timeout 60 mpirun --allow-run-as-root --oversubscribe -np 2 "$BIN" configs/bench-mlp1024.ini train.device=cuda \
        >"$TMP/out" 2>"$TMP/err"
    rc=$?
    if [ $rc -eq 2 ] && grep -q "rank 0: \[train\] device = cuda: .*\(CUDA error\|no CUDA support\|CUDA plugin\)" "$TMP/err" &&
        grep -q "rank 1: \[train\] device = cuda:" "$TMP/err" && ! grep -q "steps, median" "$TMP/out"; then
        ok "device = cuda without a GPU: every rank exits 2 naming $(grep -o 'cuda[A-Za-z]*Error[A-Za-z]*\|no CUDA support' "$TMP/err" | head -1)"
    else no "device = cuda without a GPU (rc $rc): $(head -c 400 "$TMP/err")"; fi
fi

# launch/ddprun: the printed mpirun command, a real 2-rank run, bad usage
cores=$(getconf _NPROCESSORS_ONLN)
np=$((cores + 1))
if DDPRUN_DRY_RUN=1 launch/ddprun -np $np --tag-output -- cfg.ini a.b=c 2>"$TMP/err" &&
    grep -qE -- "^ddprun: mpirun -np $np .*--oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS=1 --tag-output .*ddp-train cfg.ini a.b=c$" "$TMP/err"; then
    ok "ddprun oversubscribes beyond $cores cores and passes options through"
else no "ddprun dry run: $(cat "$TMP/err")"; fi
if env -u OPENBLAS_NUM_THREADS DDPRUN_DRY_RUN=1 launch/ddprun -np 1 -- cfg.ini 2>"$TMP/err" &&
    grep -qE -- "--map-by slot:PE=$cores --bind-to core -x OPENBLAS_NUM_THREADS=$cores " "$TMP/err"; then
    ok "ddprun gives one rank all $cores cores"
else no "ddprun one rank: $(cat "$TMP/err")"; fi
if DDP_TRAIN="$BIN" launch/ddprun -np 2 -- configs/bench-mlp1024.ini train.max_steps=30 log.metrics="$TMP/d.jsonl" \
    log.progress=off >"$TMP/out" 2>&1 && grep -q "replicas identical on 2 ranks" "$TMP/out" &&
    python3 -c "import json; d=json.loads(open('$TMP/d.jsonl').readlines()[-1]); assert d['ranks']==2 and d['comm_ms']>0, d"; then
    ok "ddprun trains on 2 ranks"
else no "ddprun trains on 2 ranks: $(tail -5 "$TMP/out")"; fi
if launch/ddprun -- cfg.ini 2>"$TMP/err"; then no "ddprun without -np"
elif grep -q "needs a positive rank count" "$TMP/err"; then ok "ddprun without -np is a usage error"
else no "ddprun without -np: $(cat "$TMP/err")"; fi

bash -n launch/slurm.sbatch && grep -q "build/bin/ddp-train" launch/slurm.sbatch && ok "slurm.sbatch parses" || no "slurm.sbatch"

echo "train-cli: $P passed, $F failed"
[ "$F" -eq 0 ]
