#!/bin/bash
# The step-time predictor end to end on one node (issue 15): launch/calibrate
# (quick: one repeat, this node's link only), a ddp-train profile at one rank
# (log.profile=true), launch/predict from both, and launch/scaling --predict
# at 1 and 2 ranks (3 repeats) and strong scaling. Checks the files and columns,
# that one rank is predicted as its median repeat measured, and that 2 ranks land
# within 35% of the measurement (loose: CI machines are noisy; docs/PREDICT.md has
# the measured errors).
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
export OPENBLAS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; tail -12 "$TMP/out" 2>/dev/null | sed 's/^/    /'; }
CFG=(configs/bench-mlp1024.ini log.progress=off train.max_steps=120)

if BUILD=$BUILD launch/calibrate --quick --out "$TMP/calib.json" >"$TMP/out" 2>&1 &&
    python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); l=c["links"]["local"]; assert l["alpha"]>=0 and l["beta"]>0 and c["compute_scale"]["1"]==1.0
k = [str(k) for k in range(2, 2 * c["cores"] + 1)]
assert sorted(c["compute_scale"]) == sorted(["1"] + k) and sorted(c["rank_lag_ms"]) == sorted(k), (c["compute_scale"], c["rank_lag_ms"])
assert all(v >= 0 for v in c["rank_lag_ms"].values())' "$TMP/calib.json"; then
    ok "calibrate: links.local, compute_scale and rank_lag_ms (k = 2 .. 2 x cores) written"
else
    no "calibrate"
fi
if ! BUILD=$BUILD launch/calibrate --quick --compute-config "$TMP/none.ini" --out "$TMP/c2.json" >"$TMP/out" 2>&1 &&
    grep -q "compute-config: $TMP/none.ini: no such file" "$TMP/out"; then
    ok "calibrate: a missing --compute-config named"
else
    no "calibrate --compute-config"
fi
# a link whose tc output has no tbf burst stops calibrate before its sweeps (without
# the burst every prediction at that rate comes out high): `tc qdisc show` faked
if tests/e2e/vcluster.sh --probe; then
    mkdir -p "$TMP/bin"
    printf '#!/bin/sh\n[ "$1 $2" = "qdisc show" ] && { echo "qdisc noqueue 0: root refcnt 2"; exit 0; }\nexec %s "$@"\n' \
        "$(command -v tc)" >"$TMP/bin/tc"
    chmod +x "$TMP/bin/tc"
    if ! PATH="$TMP/bin:$PATH" VCLUSTER_NAME=ddpcalt BUILD=$BUILD launch/calibrate --quick --rate 1gbit \
        --out "$TMP/c3.json" >"$TMP/out" 2>&1 && grep -q "links.1gbit: no tbf burst in .tc qdisc show dev eth0. of node ddpcalt-n1" "$TMP/out" &&
        [ ! -e "$TMP/c3.json" ] && [ -z "$(ip netns list | grep -E '^ddpcalt-')" ]; then
        ok "calibrate: a link without a tbf burst named, its cluster taken down"
    else
        no "calibrate: tbf burst missing"
    fi
else
    echo "skip: calibrate's tbf check (network namespaces cannot be made here)"
fi
if "$BUILD/bin/ddp-train" "${CFG[@]}" log.profile=true log.metrics="$TMP/prof.jsonl" >"$TMP/out" 2>&1 &&
    [ "$(grep -c '"event":"profile_layer"' "$TMP/prof.jsonl")" -eq 6 ] && grep -q '"event":"profile"' "$TMP/prof.jsonl"; then
    ok "log.profile: 6 layer records and the step's"
else
    no "log.profile"
fi
if launch/predict --calib "$TMP/calib.json" --profile "$TMP/prof.jsonl" --ranks 1,2 --zero 1 >"$TMP/pred.csv" 2>"$TMP/out" &&
    head -1 "$TMP/pred.csv" | grep -q '^ranks,nodes,link_rate,algorithm,overlap,median_step_ms' &&
    [ "$(wc -l <"$TMP/pred.csv")" -eq 3 ]; then
    ok "predict: a CSV with launch/scaling's columns, one row per rank count"
else
    no "predict"
fi
# against a full calibration of this machine kind (docs/predict), not the --quick one
# above: a single quick sweep of the local link came out 3-4x slow (4.6-5.9 GB/s against
# 16-22) in 3 of 7 direct tries on 2026-12-07 (and 3-repeat sweeps did no better), and put
# the 2 ranks +36-42% off in three runs of this test
CAL=docs/predict/calib-validate-2026-12-06r.json
if launch/scaling --ranks 1,2 --steps 150 --repeats 3 --predict "$CAL" --out "$TMP/sc" -- configs/bench-mlp1024.ini >"$TMP/out" 2>&1 &&
    python3 - "$TMP/sc/results.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [r["ranks"] for r in rows] == ["1", "2"], rows
for r in rows:
    err = float(r["error"])
    print("ranks %s: measured %s ms, predicted %s ms, error %+.1f%%" % (r["ranks"], r["median_step_ms"], r["predicted_step_ms"], 100 * err))
    # one rank: the profile of the median repeat, so the measured median itself
    assert abs(err) < (0.002 if r["ranks"] == "1" else 0.35), r
PY
then
    cat "$TMP/out" | grep "predicted" | head -2
    ok "scaling --predict: predicted_step_ms, predicted_efficiency and error beside the measurement"
else
    no "scaling --predict"
    python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); l=c["links"]["local"]; print("    calibration: compute_scale %s, local alpha %.2g s beta %.3g s/B" % (c["compute_scale"], l["alpha"], l["beta"]))' "$CAL"
fi
[ -s "$TMP/sc/efficiency.png" ] && ok "efficiency.png drawn" || no "efficiency.png"
# strong scaling: the 2-rank point (batch 32 per rank) is predicted from a 1-rank profile at batch 32
if launch/scaling --mode strong --ranks 1,2 --steps 40 --repeats 2 --predict "$TMP/calib.json" --out "$TMP/st" -- configs/bench-mlp1024.ini >"$TMP/out" 2>&1 &&
    python3 -c 'import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); assert [x["batch_per_rank"] for x in r]==["64","32"] and all(float(x["predicted_step_ms"])>0 for x in r), r' "$TMP/st/results.csv"; then
    ok "scaling --mode strong --predict: each batch per rank predicted"
else
    no "scaling --mode strong --predict"
fi
echo "predict-e2e: $P passed, $F failed"
[ "$F" -eq 0 ]
