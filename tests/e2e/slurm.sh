#!/bin/bash
# launch/slurm.sbatch on a real one-node Slurm, as a new user would run it:
# munged, slurmctld and slurmd started as root from a generated slurm.conf
# in a temporary directory (nothing outside it is touched, the daemons are
# stopped at the end). The job trains with its checkpoints in a directory
# whose parents do not exist yet; it is requeued (scontrol requeue) after its
# first checkpoint and must resume from it and finish.
#   tests/e2e/slurm.sh --probe   exit 0 when Slurm can run here (installs
#                                slurm-wlm and munge when missing, as root)
# Ends with "N passed, N failed".
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
ROOT=$PWD

probe() {
    [ "$(id -u)" -eq 0 ] || return 1
    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1; } ||
            return 1
    fi
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null
}
[ "${1:-}" = --probe ] && { probe; exit $?; }
probe || { echo "slurm: 0 passed, 1 failed (cannot install Slurm)"; exit 1; }

S=$(mktemp -d /tmp/ddp-slurm.XXXXXX)
chmod 755 "$S"
export SLURM_CONF=$S/slurm.conf
P=0 F=0
ok() { P=$((P + 1)); echo "ok: $1"; }
no() { F=$((F + 1)); echo "FAIL: $1"; }
stop() {
    scontrol shutdown >/dev/null 2>&1
    sleep 1
    for f in slurmctld slurmd munged; do [ -s "$S/$f.pid" ] && kill "$(cat "$S/$f.pid")" 2>/dev/null; done
    pkill -f "$S" 2>/dev/null
    sleep 1
    pkill -KILL -f "$S" 2>/dev/null
    rm -rf "$S"
}
trap stop EXIT

host=$(hostname -s)
mkdir -p "$S/state" "$S/spool" "$S/munge"
dd if=/dev/urandom of="$S/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 700 "$S/munge"
chmod 400 "$S/munge/munge.key"
munged --force --key-file="$S/munge/munge.key" --socket="$S/munge/munge.sock" --pid-file="$S/munged.pid" \
    --log-file="$S/munged.log" --seed-file="$S/munge/seed" || { echo "FAIL: munged did not start"; cat "$S/munged.log"; exit 1; }
cat >"$SLURM_CONF" <<EOF
ClusterName=ddptest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldPort=26817
SlurmdPort=26818
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobRequeue=1
MinJobAge=600
NodeName=$host CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -f "$SLURM_CONF" && slurmd -f "$SLURM_CONF" || { echo "FAIL: the Slurm daemons did not start"; tail "$S"/*.log; exit 1; }
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qE '^idle' && break; sleep 1; done
sinfo -h -o %T 2>/dev/null | grep -qE '^idle' && ok "a one-node Slurm is up ($(sinfo -h -o '%N %c CPUs %T'))" ||
    { no "the node did not become idle: $(sinfo 2>&1 | tail -2)"; tail -5 "$S/slurmctld.log" "$S/slurmd.log"; echo "slurm: $P passed, $F failed"; exit 1; }

job_state() { scontrol show job "$1" 2>/dev/null | sed -nE 's/.*JobState=([A-Z_]+).*/\1/p'; }
wait_state() { # JOB STATE SECONDS
    for _ in $(seq "$3"); do [ "$(job_state "$1")" = "$2" ] && return 0; sleep 1; done
    return 1
}

# the job as README shows it, from the repository root, with checkpoints in a
# directory whose parents do not exist (the first run of a new user)
CK=$S/shared/checkpoints/run1
M=$S/logs/metrics.jsonl
STEPS=600
id=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 CKPT_DIR=$CK \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --open-mode=append --output="$S/job-%j.out" \
    launch/slurm.sbatch configs/bench-mlp1024.ini train.max_steps=$STEPS checkpoint.every_steps=100 \
    log.every_steps=100 log.progress=off log.metrics="$M" DDP_TRAIN_UNUSED=1 2>&1)
# (the last argument is not section.key=value: the job must fail, saying so)
if ! [[ "$id" =~ ^[0-9]+$ ]]; then no "sbatch: $id"; echo "slurm: $P passed, $F failed"; exit 1; fi
wait_state "$id" FAILED 120 && grep -qF "override 'DDP_TRAIN_UNUSED=1': expected section.key=value" "$S/job-$id.out" &&
    ok "a bad argument to the job fails it with a message (job $id)" || no "bad argument: $(tail -3 "$S/job-$id.out" 2>&1)"

id=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 CKPT_DIR=$CK \
    sbatch --parsable --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --open-mode=append --output="$S/job-%j.out" \
    launch/slurm.sbatch configs/bench-mlp1024.ini train.max_steps=$STEPS checkpoint.every_steps=100 \
    log.every_steps=100 log.progress=off log.metrics="$M" 2>&1)
out=$S/job-$id.out
for _ in $(seq 180); do [ -s "$CK/ckpt-00000100.bin" ] && break; sleep 1; done
if [ -s "$CK/ckpt-00000100.bin" ]; then ok "job $id trains and checkpoints into $CK (parents created)"
else no "no checkpoint in $CK after 180 s: $(tail -3 "$out" 2>&1)"; fi
scontrol requeue "$id" && ok "scontrol requeue $id" || no "scontrol requeue $id"
# a requeued job waits for its begin time; release it at once
sleep 2
scontrol update jobid="$id" StartTime=now >/dev/null 2>&1
if wait_state "$id" COMPLETED 300; then ok "the requeued job completed"
else no "the requeued job did not complete: state $(job_state "$id"); $(tail -3 "$out" 2>&1)"; fi
grep -q "resumed from $CK/ckpt-[0-9]*\.bin at step [1-9]" "$out" && ok "it resumed from its checkpoint ($(grep -o 'resumed from [^ ]* at step [0-9]*' "$out" | tail -1))" ||
    no "no resume in $out: $(grep -m3 'ddp-train' "$out")"
grep -q "replicas identical on 2 ranks" "$out" && ok "replicas identical on 2 ranks" || no "replica check missing"
python3 - "$M" "$STEPS" <<'PY' && ok "metrics: the done record has all $STEPS steps (appended across the requeue)" || no "metrics: $(tail -1 "$M" 2>&1)"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
done = [r for r in recs if r["event"] == "done"]
assert done and done[-1]["steps"] == int(sys.argv[2]) and done[-1]["ranks"] == 2, done
PY
echo "slurm: $P passed, $F failed"
[ $F -eq 0 ]
