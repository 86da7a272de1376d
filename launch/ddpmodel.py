"""The step-time model behind launch/predict (docs/PREDICT.md has its equations).

Three parts, each usable alone:
  - collective costs: alpha-beta-gamma forms (Thakur, Rabenseifner and Gropp) of the
    algorithms libcoll runs, with alpha (latency per step) and beta (time per byte)
    per link class, fitted from coll-bench sweeps (fit_link);
  - the step's timeline: each gradient bucket's collective starts at
    max(its gradients ready in backward, the previous bucket's collective done), one at
    a time as the progress thread runs them; ZeRO-1's all-gather after the optimiser;
  - the figures launch/scaling reports (step, compute, comm, exposed, efficiency).
Pure Python (no numpy): the fits are two-parameter least squares.
"""
import math
import re

# libcoll's auto thresholds (collectives/select.c): recursive doubling up to these
# bytes, the ring above; hier across nodes with several ranks each.
RD_MAX = {2: 16384}
RD_MAX_DEFAULT = 65536


class ModelError(ValueError):
    """Bad input to the model (a missing key, an impossible configuration)."""


# collectives/tunables.c's COLL_HIER_SEGMENT_BYTES default: hier's all-reduce pipelines
# its node and cross-node stages in segments of this size
HIER_SEGMENT_BYTES = 2 << 20

def _log2ceil(p):
    return max(0, math.ceil(math.log2(p))) if p > 1 else 0


def coefficients(kind, algo, p, nbytes):
    """(latency steps, bytes on the wire per rank, bytes reduced per rank) of one
    collective of nbytes (the whole buffer) at p ranks. The cost is
    steps * alpha + wire * beta + reduced * gamma."""
    if p <= 1:
        return 0.0, 0.0, 0.0
    b = float(nbytes)
    if kind == "allreduce":
        if algo in ("ring", "shm"):
            # shm two-shot: each rank reads (p-1)/p of the buffer from peers to reduce
            # its shard, then copies the others' shards: the same traffic as the ring
            return 2.0 * (p - 1), 2.0 * (p - 1) / p * b, (p - 1) / p * b
        if algo == "rd":
            k = _log2ceil(p)
            extra = 0 if p & (p - 1) == 0 else 2  # non-powers of two fold in and out
            return float(k + extra), (k + extra) * b, k * b
    if kind in ("reduce_scatter", "allgather"):
        if algo in ("ring", "shm"):
            return float(p - 1), (p - 1) / p * b, (p - 1) / p * b if kind == "reduce_scatter" else 0.0
    raise ModelError("no cost model for %s with algorithm %s" % (kind, algo))


def fit_link(small, large, kind, algo, p, min_bytes=0):
    """alpha from the smallest sizes (time per latency step of a collective of a few
    bytes: the median over `small`), then beta by least squares through that intercept
    over the `large` sizes from min_bytes (a tbf link's burst makes small transfers
    look faster than its rate). The reduction's cost is folded into beta (its bytes
    grow with the wire's at every rank count for the all-reduce). Returns (alpha,
    beta, relative residuals of the large points)."""
    steps, wire, _ = coefficients(kind, algo, p, 1.0)
    if steps == 0 or wire == 0:
        raise ModelError("cannot fit %s %s at %d ranks" % (kind, algo, p))
    if not small:
        raise ModelError("a latency fit needs at least one small size")
    lat = sorted(t for _, t in small)
    alpha = lat[len(lat) // 2] / steps
    kept = [(b, t) for b, t in large if b >= min_bytes]
    if len(kept) < 2:
        raise ModelError("a bandwidth fit needs at least two sizes from %d bytes (got %d)" % (min_bytes, len(kept)))
    xs = [b * wire for b, _ in kept]
    ys = [t - steps * alpha for _, t in kept]
    # relative least squares: every size weighs the same, not the largest most
    beta = max(0.0, sum(x * y / t ** 2 for x, y, (_, t) in zip(xs, ys, kept)) /
               sum(x * x / t ** 2 for x, (_, t) in zip(xs, kept)))
    res = [(t - (steps * alpha + x * beta)) / t for (b, t), x in zip(kept, xs)]
    return alpha, beta, res


def beta_table(large, kind, algo, p, alpha):
    """Each measured size's own beta (its time less the latency, per byte on the
    wire): memory on one node is faster while a buffer stays in cache, which one
    line through every size cannot follow. [[bytes, beta], ...] by size."""
    steps, wire, _ = coefficients(kind, algo, p, 1.0)
    return [[b, max(0.0, (t - steps * alpha) / (b * wire))] for b, t in sorted(large) if b > 0]


def link_beta(link, nbytes):
    """A link's beta for a collective of nbytes: its table interpolated in log size
    (clamped at the ends), or its fitted beta."""
    tab = link.get("beta_table")
    if not tab or nbytes <= 0:
        return link["beta"]
    return _log_interp(tab, nbytes)


def collective_time(kind, algo, p, nbytes, link, gamma):
    """Seconds for one collective; link = {"alpha": s, "beta": s/byte[, "beta_table"]}."""
    steps, wire, red = coefficients(kind, algo, p, nbytes)
    return steps * link["alpha"] + wire * link_beta(link, nbytes) + red * gamma


def auto_algorithm(kind, p, nodes, nbytes):
    """What libcoll's auto picks (collectives/select.c), reduced to the choices the
    model knows: hier across nodes with several ranks each, shm on one node, else rd
    for small buffers and the ring."""
    if nodes > 1 and p > nodes and kind == "allreduce":
        return "hier"
    if nodes == 1 and p > 1:
        return "shm"
    return "rd" if kind == "allreduce" and nbytes <= RD_MAX.get(p, RD_MAX_DEFAULT) else "ring"


class Cluster:
    """Link costs for a configuration: ranks over nodes (equal numbers per node), each
    node's ranks sharing its link. calib: {"links": {class: {"alpha", "beta"}},
    "gamma": s per byte reduced, "cores": n}."""

    def __init__(self, calib, ranks, nodes, link_class):
        if ranks < 1 or nodes < 1 or ranks % nodes:
            raise ModelError("%d ranks cannot be spread equally over %d nodes" % (ranks, nodes))
        links = calib.get("links", {})
        if "local" not in links:
            raise ModelError("the calibration has no 'local' link (same node)")
        if nodes > 1 and link_class not in links:
            raise ModelError("the calibration has no link '%s' (it has: %s)" % (link_class, ", ".join(sorted(links))))
        self.p, self.n, self.local_n = ranks, nodes, ranks // nodes
        self.local = links["local"]
        self.net = links.get(link_class) if nodes > 1 else None
        self.gamma = float(calib.get("gamma", 0.0))
        self.cores = int(calib.get("cores", 1))
        # ranks whose threads share a machine's cores: a node's, or every rank where
        # the nodes are emulated on one machine (launch/vcluster)
        self.emulated = nodes > 1 and bool(self.net.get("emulated"))
        self.cpu_ranks = ranks if self.emulated else self.local_n
        # tbf's token bucket on each node's emulated link (launch/vcluster): bytes that
        # pass at once after the link has been idle long enough to refill it
        self.burst = float(self.net.get("burst_bytes", 0.0)) if self.emulated else 0.0

    def threads_per_core(self):
        """Busy threads per core while a step overlaps: each rank's compute thread and
        its progress thread."""
        return 2.0 * self.cpu_ranks / self.cores

    def comm_slowdown(self):
        """How much slower a collective runs while the ranks also compute, where their
        threads outnumber the cores: a link whose transfers are CPU work (the same
        node's copies: "cpu_bound") is time-shared with the compute threads, so it runs
        threads-per-core times slower (2x at 2 ranks on 2 cores; the calibration's
        loaded_slowdown, measured beside GEMM loops, was 1.9-2.6x there). A network
        link's transfers wait on the wire, not the CPU: their CPU work is the floor in
        simulate() instead."""
        r = self.threads_per_core()
        link = self.local if self.n == 1 else self.net
        if r <= 1.0 or not link.get("cpu_bound"):
            return 1.0
        return r

    def net_cpu_per_byte(self):
        """CPU seconds the network stack spends per byte a rank sends (calibrated)."""
        return float(self.net.get("cpu_s_per_byte", 0.0)) if self.net else 0.0

    def spare_cores(self):
        """Whether each rank's progress thread has a core of its own beside its compute."""
        return self.threads_per_core() <= 1.0

    def time(self, kind, algo, nbytes):
        """Seconds of one collective of nbytes on this cluster, in a training step."""
        return self.idle_time(kind, algo, nbytes) * self.comm_slowdown()

    def across(self, kind, algo, nbytes):
        """The algorithm a collective runs across nodes: "hier" (an all-reduce with
        several ranks on each node), else the flat one (hier otherwise, and shm, fall
        back to the ring: collectives/select.c)."""
        if algo == "auto":
            algo = auto_algorithm(kind, self.p, self.n, nbytes)
        if algo == "hier" and kind == "allreduce" and self.local_n > 1:
            return "hier"
        return "ring" if algo in ("shm", "hier") else algo

    def link_bytes(self, kind, algo, nbytes):
        """(bytes a node's link carries each way, seconds per such byte at its rate) for
        a collective whose wire time an emulated link's token bucket can shorten: the
        flat algorithms across nodes (L ranks' wire bytes through the node's link, as
        _shared counts them). (0, 0) otherwise: one node, or hier, whose cross-node
        stage overlaps its node stages (not modelled)."""
        if not self.burst or self.p == 1 or nbytes == 0:
            return 0.0, 0.0
        algo = self.across(kind, algo, nbytes)
        if algo == "hier":
            return 0.0, 0.0
        return coefficients(kind, algo, self.p, nbytes)[1] * self.local_n, link_beta(self.net, nbytes)

    def idle_time(self, kind, algo, nbytes):
        """The same with nothing else running."""
        p, n, L = self.p, self.n, self.local_n
        if p == 1 or nbytes == 0:
            return 0.0
        if n == 1:  # hier on one node runs shm (collectives/select.c)
            if algo == "auto":
                algo = auto_algorithm(kind, p, n, nbytes)
            return collective_time(kind, "shm" if algo == "hier" else algo, p, nbytes, self.local, self.gamma)
        algo = self.across(kind, algo, nbytes)
        if algo == "hier":
            # shm reduce-scatter and all-gather inside the node, and every node
            # rank's shard all-reduced across nodes at once: L shards share the link.
            # Above HIER_SEGMENT_BYTES the stages overlap segment by segment
            # (collectives/hier.c): the longer of the two, plus one segment of the other.
            inside = collective_time("reduce_scatter", "shm", L, nbytes, self.local, self.gamma) + \
                collective_time("allgather", "shm", L, nbytes, self.local, 0.0)
            shared = _shared(self.net, L)
            segs = max(1, -(-int(nbytes) // HIER_SEGMENT_BYTES))
            across = segs * collective_time("allreduce", "ring", n, nbytes / segs / L, shared, self.gamma)
            if segs == 1:
                return inside + across
            return max(inside, across) + min(inside, across) / segs
        # a flat algorithm across nodes: every step crosses a link shared by L ranks
        return collective_time(kind, algo, p, nbytes, _shared(self.net, L), self.gamma)


def _shared(link, ranks):
    """A node's link carrying `ranks` ranks' traffic at once: each gets 1/ranks of it."""
    out = {"alpha": link["alpha"], "beta": link["beta"] * ranks}
    if link.get("beta_table"):
        out["beta_table"] = [[b, v * ranks] for b, v in link["beta_table"]]
    return out


def buckets(nparams, ranks, bucket_mb, overlap):
    """The engine's buckets (src/ddp.c): [lo, hi) element ranges of the flat buffer
    padded to a multiple of the ranks, bucket_mb each rounded down to a multiple of
    the ranks; one bucket without overlap."""
    padded = -(-nparams // ranks) * ranks
    bf = int(bucket_mb * (1 << 20) / 4) // ranks * ranks
    bf = max(bf, ranks)
    if not overlap or bf > padded:
        bf = padded if padded else ranks
    return [(lo, min(lo + bf, padded)) for lo in range(0, padded, bf)]


def ready_times(profile, bks):
    """When each bucket's gradients are complete, in ms from the start of backward:
    backward runs the layers in profile["backward"] order, each making the gradients
    of its [lo, hi) (the flat layout puts the last layer first, so the frontier moves
    up); a bucket is ready once the frontier passes its end (the padding past the
    last parameter is always complete)."""
    count = profile["params"]
    t, frontier, out, i = 0.0, 0, [], 0
    layers = profile["backward"]
    for layer in layers:
        t += layer["ms"]
        if layer.get("hi", 0) > frontier:
            frontier = layer["hi"]
        while i < len(bks) and frontier >= min(bks[i][1], count):
            out.append(t)
            i += 1
    total = sum(layer["ms"] for layer in layers)
    out += [total] * (len(bks) - i)
    return out


class _TokenBucket:
    """An emulated link's tbf bucket through one step: it fills at the link's rate
    while the link is idle, up to `size` bytes, and a transfer's first bytes up to its
    level pass at once (veth has no rate of its own), so that transfer is shorter by
    those bytes' time at the rate. Times in ms on the step's clock."""

    def __init__(self, cluster, level=None, free_at=float("-inf")):
        self.cluster, self.size = cluster, cluster.burst
        self.level = self.size if level is None else level
        self.free_at = free_at

    def spend(self, kind, algo, nbytes, start):
        """ms a collective starting at `start` saves on the bucket's bytes."""
        link, beta = self.cluster.link_bytes(kind, algo, nbytes)  # (0, 0) without a bucket
        if not link or not beta:
            return 0.0
        idle = max(0.0, start - self.free_at)
        self.level = min(self.size, self.level + 1e-3 * idle / beta)
        used = min(self.level, link)
        self.level -= used
        return 1e3 * used * beta

    def busy_until(self, end):
        self.free_at = end


def fused_update(cluster, cfg):
    """Whether ddp-train averages zero = 0's gradients in its fused update (include/
    ddp.h): every rank on one node, shared memory, no compression; ddp.fused_update
    on, or auto where the ranks (one BLAS thread each) fill the cores."""
    if cluster.p < 2 or cluster.n != 1 or cfg.get("zero") or cfg.get("compress", "none") != "none" or \
            cfg.get("algorithm", "auto") not in ("auto", "shm"):
        return False
    mode = cfg.get("fused_update", "auto")
    return mode == "on" or (mode == "auto" and cluster.cpu_ranks >= cluster.cores)


def simulate(profile, cluster, cfg):
    """One step's timeline. profile: {"params", "forward_ms", "backward": [{"ms", "lo",
    "hi"}...] in execution order, "optimizer_ms", "data_ms"} measured at one rank;
    cfg: {"overlap", "bucket_mb", "zero", "algorithm", "compress", "compute_scale",
    "fused_update"}. Returns the figures in ms."""
    p = cluster.p
    scale = float(cfg.get("compute_scale", 1.0))
    # how far the slowest rank is behind the model's compute at a wait, after `seg` ms
    # of compute since the ranks last waited together (calibrated: rank_lag_ms): ranks
    # time-sharing the cores are off them for up to a scheduler slice, and which one
    # is changes from step to step; a segment shorter than that lags by less
    lag_ms = float(cfg.get("rank_lag_ms", 0.0)) if p > 1 else 0.0

    def lag(seg):
        return min(lag_ms, seg)
    fwd = profile["forward_ms"] * scale
    bwd = sum(layer["ms"] for layer in profile["backward"]) * scale
    opt = profile["optimizer_ms"] * scale / (p if cfg.get("zero") else 1)
    data = profile.get("data_ms", 0.0) * scale
    compress = cfg.get("compress", "none")
    if compress not in ("none", "bf16", "fp16"):
        raise ModelError("compress = %s has no model (none, bf16, fp16)" % compress)
    width = 2 if compress != "none" else 4
    zc_ms = profile.get("compress_ms_per_mparam", 0.0) * profile["params"] / 1e6 if compress != "none" else 0.0
    bks = buckets(profile["params"], p, cfg.get("bucket_mb", 4.0), cfg.get("overlap", True))
    if fused_update(cluster, cfg):
        # after backward, each rank averages its shard from the peers' buffers (a
        # reduce-scatter's bytes) between two barriers, with nothing beside it to
        # share the cores with; the all-gather's copy never happens: the optimiser
        # reads the others' means where they are (measured: 0.69-0.88 ms exposed at
        # 2 ranks for bench-mlp1024, where the whole two-shot all-reduce is 1.3 ms).
        # Those reads are the all-gather's bytes from the peers' caches, inside the
        # optimiser: ddp-train's log.profile put its optimiser at 0.89-1.07 ms at 2
        # ranks against 0.70-0.79 ms alone (bench-mlp1024, 2026-12-06 17:16 UTC),
        # where the shm all-gather of its 7.5 MB is calibrated at 0.23 ms.
        # The barriers wait for the slowest rank's compute (lag).
        nbytes = (bks[-1][1] - bks[0][0]) * 4
        comm = 1e3 * (cluster.idle_time("reduce_scatter", "shm", nbytes) + 2 * cluster.local["alpha"])
        compute = fwd + bwd + opt + data + 1e3 * cluster.idle_time("allgather", "shm", nbytes)
        comm += lag(fwd + bwd + opt + data)
        return {"median_step_ms": compute + comm, "compute_ms": compute, "comm_ms": comm,
                "exposed_comm_ms": comm, "wire_bytes": 0}
    ready = [r * scale for r in ready_times(profile, bks)] if cfg.get("overlap", True) else [bwd] * len(bks)
    kind = "reduce_scatter" if cfg.get("zero") else "allreduce"
    algo = cfg.get("algorithm", "auto")
    galgo = "ring" if algo == "rd" else algo  # recursive doubling has no all-gather model here
    zero = cfg.get("zero") and p > 1
    # The compute threads last waited together at the end of the previous step's
    # collectives: ZeRO-1's all-gathers after the optimiser, else the wait for the
    # last bucket before it (so ZeRO-0's optimiser runs unsynchronised too). A
    # collective cannot start before the slowest rank reaches it: the model's time
    # plus that rank's lag over the compute since then.
    pre = data + fwd + (0.0 if zero else opt)

    def timeline(bucket):
        """(step, comm, sync_end, gather) from the start of backward (ms), the link's
        token bucket carried through the step's collectives in order."""
        done, comm = 0.0, 0.0
        for (lo, hi), r in zip(bks, ready):
            start = max(r + lag(pre + r), done)
            c = 1e3 * cluster.time(kind, algo, (hi - lo) * width) - bucket.spend(kind, algo, (hi - lo) * width, start)
            done = start + c
            bucket.busy_until(done)
            comm += c
        sync_end = max(bwd + lag(pre + bwd), done) if p > 1 else bwd
        # ZeRO-1's all-gathers wait for the slowest rank's optimiser; ZeRO-0's
        # optimiser lag shows at the next step's first bucket (pre)
        after = zc_ms * scale + opt
        after += lag(after) if zero else 0.0
        gather, at = 0.0, sync_end + after
        if zero:
            for lo, hi in bks:
                g = 1e3 * cluster.time("allgather", galgo, (hi - lo) * 4) - bucket.spend("allgather", galgo, (hi - lo) * 4, at)
                at += g
                gather += g
                bucket.busy_until(at)
            comm += gather
        return data + fwd + sync_end + after + gather, comm, sync_end, gather

    bucket = _TokenBucket(cluster)
    step, comm, sync_end, gather = timeline(bucket)
    if cluster.burst:
        # the steady state: this step's bucket starts as the last one left it, refilled
        # over the link's idle time to the step's end and through data and forward (the
        # last transfer's end, on the next step's clock, is one step earlier)
        bucket = _TokenBucket(cluster, bucket.level, bucket.free_at - step)
        step, comm, sync_end, gather = timeline(bucket)
    compute = fwd + bwd + opt + data + zc_ms * scale
    # Overlapped communication is hidden only where the progress thread has a core
    # to itself; on one node its copies are CPU work that otherwise pre-empts the
    # compute thread and lengthens the step by that much (ddp-train counts it as
    # exposed, as here). Across nodes the network's CPU work is the floor below.
    if p > 1 and cluster.n == 1 and not cluster.spare_cores():
        hidden = comm - (sync_end - bwd) - gather
        step += max(0.0, hidden) / cluster.comm_slowdown()  # the CPU work, not the time-shared wait
    wire = _wire(bks, p, width, cfg.get("zero"))
    # Where the ranks' threads outnumber the cores, the step also cannot be shorter
    # than the CPU work of all the ranks sharing them: each rank's compute and the
    # network stack's work for its bytes (emulated nodes share one machine's cores).
    if p > 1 and cluster.n > 1 and not cluster.spare_cores():
        share = max(1.0, cluster.cpu_ranks / cluster.cores)
        step = max(step, share * (compute / max(1.0, cluster.cpu_ranks / cluster.cores) +
                                  1e3 * wire * cluster.net_cpu_per_byte()))
    return {"median_step_ms": step, "compute_ms": compute, "comm_ms": comm,
            "exposed_comm_ms": max(0.0, step - compute), "wire_bytes": wire}


def _wire(bks, p, width, zero):
    """Bytes a rank sends per step by the ring's count (what libcoll reports):
    2(P-1)/P of the gradients for an all-reduce; with ZeRO-1 (P-1)/P of them for
    the reduce-scatter plus (P-1)/P of the float32 parameters for the all-gather."""
    if p == 1:
        return 0
    elems = sum(hi - lo for lo, hi in bks)
    if zero:
        return int((p - 1) / p * elems * (width + 4))
    return int(2 * (p - 1) / p * elems * width)


def profile_from_records(records):
    """The model's profile from ddp-train's log.profile records (JSON objects);
    None when there are none."""
    layers = sorted((r for r in records if r.get("event") == "profile_layer"), key=lambda r: r["order"])
    steps = [r for r in records if r.get("event") == "profile"]
    if not layers or not steps:
        return None
    step = steps[-1]
    # The parts are means over the profiled steps, the step a median: scaled to it,
    # so that one rank's step is the measured one (noise in the means, and the
    # clock reads between layers, would otherwise bias every prediction alike).
    parts = step["forward_ms"] + step["backward_ms"] + step["optimizer_ms"] + step["data_ms"]
    k = step["step_ms"] / parts if step.get("step_ms") and parts > 0 else 1.0
    return {"params": step["params"], "batch": step["batch"], "forward_ms": k * step["forward_ms"],
            "optimizer_ms": k * step["optimizer_ms"], "data_ms": k * step["data_ms"],
            "backward": [{"ms": k * r["backward_ms"], "lo": r["lo"], "hi": r["hi"]} for r in layers]}


def median_profile(runs):
    """The profile of the run (a list of records each) whose profiled step is the
    median (the lower of the middle two for an even count): repeats of a one-rank run
    drift with the host, and the median run is the one its measured row reports.
    None when no run has profile records."""
    profs = [p for p in (profile_from_records(r) for r in runs) if p]
    if not profs:
        return None
    step = lambda p: p["forward_ms"] + p["optimizer_ms"] + p["data_ms"] + sum(l["ms"] for l in p["backward"])
    return sorted(profs, key=step)[(len(profs) - 1) // 2]


def compute_scale(calib, per_node):
    """Compute time at per_node ranks on a node against one rank alone: as measured
    (memory and cache shared up to the cores, time-shared beyond them), else the
    most ranks measured up to the cores, time-shared k / cores beyond them."""
    table = {int(k): float(v) for k, v in calib.get("compute_scale", {}).items()}
    if per_node in table:
        return table[per_node]
    cores = int(calib.get("cores", 1))
    s = table.get(min(per_node, cores), 1.0)
    return s * max(1.0, per_node / cores)


def rank_lag_ms(calib, per_node):
    """How far (ms) the slowest of per_node ranks sharing a machine's cores is behind
    compute_scale's time when they wait for each other (a step waits for the slowest
    rank of that step; compute_scale is the slowest rank's median step): as measured
    at the most ranks up to per_node; 0 for one rank."""
    table = {int(k): float(v) for k, v in calib.get("rank_lag_ms", {}).items()}
    known = [k for k in table if 2 <= k <= per_node]
    return table[max(known)] if known else 0.0


def predict(calib, profile, ranks, nodes, link_class, cfg):
    """One point of a scaling experiment: the simulated step at `ranks` over `nodes`
    (link_class between them) and at one rank with the same configuration; adds
    "efficiency" = t(1) / t(P) (weak scaling: the profile's batch per rank)."""
    prof = dict(profile, compress_ms_per_mparam=float(calib.get("compress_ms_per_mparam", 0.0)))
    out = {}
    for p, n in ((1, 1), (ranks, nodes)):
        cl = Cluster(calib, p, n, link_class)
        out[p] = simulate(prof, cl, dict(cfg, compute_scale=compute_scale(calib, cl.cpu_ranks),
                                         rank_lag_ms=rank_lag_ms(calib, cl.cpu_ranks)))
    r = dict(out[ranks])
    r["efficiency"] = out[1]["median_step_ms"] / r["median_step_ms"]
    return r


# a link's optional figures the model reads (launch/calibrate writes them)
LINK_FIGURES = ("burst_bytes", "cpu_s_per_byte")

CALIB_KEYS = {"version", "machine", "date", "cores", "gamma", "links", "compute_scale", "rank_lag_ms",
              "compress_ms_per_mparam", "notes"}


def load_calibration(path):
    """A calibration file (launch/calibrate), checked: ModelError names what is wrong."""
    import json
    try:
        with open(path) as f:
            c = json.load(f)
    except OSError as e:
        raise ModelError("cannot read %s (%s)" % (path, e.strerror))
    except ValueError as e:
        raise ModelError("%s is not JSON (%s)" % (path, e))
    if not isinstance(c, dict):
        raise ModelError("%s is not a JSON object" % path)
    for k in c:
        if k not in CALIB_KEYS:
            raise ModelError("%s: unknown key '%s' (known: %s)" % (path, k, ", ".join(sorted(CALIB_KEYS))))
    links = c.get("links")
    if not isinstance(links, dict) or "local" not in links:
        raise ModelError("%s: links.local (the same node) is missing" % path)
    for name, link in links.items():
        for k in ("alpha", "beta"):
            if not isinstance(link, dict) or not isinstance(link.get(k), (int, float)):
                raise ModelError("%s: links.%s has no number '%s'" % (path, name, k))
        for k in LINK_FIGURES:
            v = link.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ModelError("%s: links.%s: '%s' must be a number >= 0 (got %r)" % (path, name, k, v))
    for table in ("compute_scale", "rank_lag_ms"):  # {ranks: figure}
        t = c.get(table, {})
        if not isinstance(t, dict):
            raise ModelError("%s: '%s' must be an object of rank counts (got %r)" % (path, table, t))
        for k, v in t.items():
            if not k.isdigit() or int(k) < 1 or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ModelError("%s: %s.%s: a rank count >= 1 with a number >= 0 (got %r)" % (path, table, k, v))
    return c


def rate_bits(name):
    """'10gbit' -> 1e10 bits/s (tc's units: bit, kbit, mbit, gbit); None if not a rate."""
    m = re.fullmatch(r"([0-9.]+)(k|m|g|)bit", str(name).strip().lower())
    if not m:
        return None
    return float(m.group(1)) * {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def link_for(calib, name, latency_us=None):
    """The link called `name`: the calibration's own; with latency_us, a link of that
    rate and latency (projections to a real cluster's parameters); else one of a rate
    the calibration never saw, made from the calibrated links of other rates: their
    median latency, and the rate at the median efficiency (rate / measured bandwidth)
    of those links, emulated like them."""
    links = calib["links"]
    bits = rate_bits(name)
    if latency_us is not None:
        if not bits:
            raise ModelError("'%s' is not a rate like 1gbit or 400mbit" % name)
        return {"alpha": latency_us * 1e-6, "beta": 8.0 / bits}
    if name in links:
        return links[name]
    known = [(rate_bits(k), v) for k, v in links.items() if k != "local" and rate_bits(k)]
    if not bits or not known:
        raise ModelError("the calibration has no link '%s' (it has: %s)%s" % (
            name, ", ".join(sorted(links)), "" if bits else "; a rate needs --latency-us or calibrated rates"))
    effs = sorted((8.0 / r) / v["beta"] for r, v in known if v["beta"] > 0)
    alphas = sorted(v["alpha"] for _, v in known)
    link = {"alpha": alphas[len(alphas) // 2], "beta": 8.0 / bits / effs[len(effs) // 2],
            "derived_from": ", ".join(sorted(k for k in links if k != "local"))}
    if any(v.get("emulated") for _, v in known):
        link["emulated"] = True
    # The network stack's work per byte does not depend on the rate; what a slower
    # link's calibration adds is its ranks polling while they wait on the wire
    # (1 Gbit/s measured 1.6-3.4 ns per byte where 10 Gbit/s measured 1.15-1.36; with
    # the interpolation between them a 2.5 Gbit/s 4-node point came out +24%). Without
    # it the step's CPU floor (emulated nodes) would vanish at this rate.
    cpu = [v["cpu_s_per_byte"] for _, v in known if isinstance(v.get("cpu_s_per_byte"), (int, float))]
    if cpu:
        link["cpu_s_per_byte"] = min(cpu)
    # tbf's burst, as launch/vcluster sets it, is the same time at every rate
    bursts = sorted(v["burst_bytes"] / r for r, v in known if isinstance(v.get("burst_bytes"), (int, float)))
    if bursts:
        link["burst_bytes"] = bursts[len(bursts) // 2] * bits
    return link


def tc_burst_bytes(text):
    """The burst of the first tbf qdisc in `tc qdisc show` output, in bytes (tc writes
    b, Kb, Mb or Gb in powers of 1024); None where there is none."""
    m = re.search(r"qdisc tbf .*?burst ([0-9.]+)(b|Kb|Mb|Gb)\b", text)
    if not m:
        return None
    return int(round(float(m.group(1)) * {"b": 1, "Kb": 1 << 10, "Mb": 1 << 20, "Gb": 1 << 30}[m.group(2)]))


def _log_interp(points, x):
    """y at x from [(x, y)] sorted by x, linear in log x, constant beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * math.log(x / x0) / math.log(x1 / x0)
    return points[-1][1]
