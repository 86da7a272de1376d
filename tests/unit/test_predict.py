#!/usr/bin/env python3
"""The step-time model (launch/ddpmodel.py) on hand-made profiles with known answers,
its fits on synthetic data, and launch/predict's bad input. Prints
"test_predict: N passed, N failed"."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "launch"))
import ddpmodel as m  # noqa: E402

MB_PER_100 = 100 * 4 / (1 << 20)  # bucket_mb of 100 floats


def two_layer_profile():
    """Backward: 10 ms making grads [0, 100), then 10 ms making [100, 200)."""
    return {"params": 200, "batch": 8, "forward_ms": 5.0, "optimizer_ms": 2.0, "data_ms": 1.0,
            "backward": [{"ms": 10.0, "lo": 0, "hi": 100}, {"ms": 10.0, "lo": 100, "hi": 200}]}


def cluster(ms_per_100_floats, ranks=2, cores=8):
    """One node; the ring all-reduce of 100 floats at 2 ranks takes the given ms
    (T = 2 alpha + B beta + B/2 gamma with alpha = gamma = 0). With enough cores
    every progress thread has one of its own."""
    beta = ms_per_100_floats * 1e-3 / 400.0
    return m.Cluster({"links": {"local": {"alpha": 0.0, "beta": beta}}, "gamma": 0.0, "cores": cores}, ranks, 1, None)


class Timeline(unittest.TestCase):
    def test_no_overlap(self):
        # one bucket of 200 floats (2 ms) after the whole backward
        r = m.simulate(two_layer_profile(), cluster(1.0), {"overlap": False, "algorithm": "ring"})
        self.assertAlmostEqual(r["comm_ms"], 2.0)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20 + 2 + 2)
        self.assertAlmostEqual(r["exposed_comm_ms"], 2.0)

    def test_last_bucket_exposed(self):
        # buckets of 100: the first ready at 10 ms, done at 11; the second ready at 20: 1 ms exposed
        r = m.simulate(two_layer_profile(), cluster(1.0), {"overlap": True, "bucket_mb": MB_PER_100,
                                                           "algorithm": "ring"})
        self.assertAlmostEqual(r["comm_ms"], 2.0)
        self.assertAlmostEqual(r["exposed_comm_ms"], 1.0)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 21 + 2)

    def test_perfect_overlap_limit(self):
        # communication 1000x faster: exposure vanishes
        r = m.simulate(two_layer_profile(), cluster(0.001), {"overlap": True, "bucket_mb": MB_PER_100,
                                                             "algorithm": "ring"})
        self.assertLess(r["exposed_comm_ms"], 0.0011)

    def test_communication_bound(self):
        # 15 ms a bucket: the second starts when the first is done (25), ends at 40
        r = m.simulate(two_layer_profile(), cluster(15.0), {"overlap": True, "bucket_mb": MB_PER_100,
                                                            "algorithm": "ring"})
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 40 + 2)
        self.assertAlmostEqual(r["exposed_comm_ms"], 20.0)

    def test_zero1(self):
        # reduce-scatter per bucket ((P-1)/P of it: 0.5 ms at 2 ranks), the optimiser on half,
        # then the all-gather of every bucket (0.5 ms each) after it
        r = m.simulate(two_layer_profile(), cluster(1.0), {"overlap": True, "bucket_mb": MB_PER_100,
                                                           "algorithm": "ring", "zero": 1})
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20.5 + 1 + 1.0)
        self.assertAlmostEqual(r["comm_ms"], 2.0)

    def test_no_spare_core(self):
        # 2 ranks on 2 cores: the hidden first bucket (1 ms of copies) pre-empts the compute
        r = m.simulate(two_layer_profile(), cluster(1.0, cores=2), {"overlap": True, "bucket_mb": MB_PER_100,
                                                                    "algorithm": "ring"})
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 21 + 2 + 1)
        self.assertAlmostEqual(r["exposed_comm_ms"], 2.0)
        # across nodes the transfers themselves wait on the wire (their CPU work is the floor)
        calib = {"links": {"local": {"alpha": 0.0, "beta": 0.0}, "net": {"alpha": 0.0, "beta": 1e-3 / 400.0}},
                 "cores": 1}
        r = m.simulate(two_layer_profile(), m.Cluster(calib, 2, 2, "net"), {"overlap": True, "bucket_mb": MB_PER_100,
                                                                            "algorithm": "ring"})
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 21 + 2)

    def test_contention(self):
        # a CPU-bound (same-node) link is time-shared with the compute threads: 2x at 2
        # ranks on 2 cores, 4x at 4, none with spare cores
        calib = {"links": {"local": {"alpha": 0.0, "beta": 1e-9, "cpu_bound": True, "loaded_slowdown": 9.0,
                                     "loaded_threads_per_core": 2.0},
                           "net": {"alpha": 0.0, "beta": 1e-9, "loaded_slowdown": 3.0, "emulated": True}},
                 "cores": 2}
        self.assertEqual(m.Cluster(calib, 2, 1, None).comm_slowdown(), 2.0)
        self.assertEqual(m.Cluster(calib, 4, 1, None).comm_slowdown(), 4.0)
        self.assertEqual(m.Cluster(dict(calib, cores=4), 2, 1, None).comm_slowdown(), 1.0)
        # the network's loaded figure is not applied; emulated nodes share the cores
        c = m.Cluster(calib, 4, 4, "net")
        self.assertEqual(c.comm_slowdown(), 1.0)
        self.assertEqual(c.cpu_ranks, 4)
        self.assertEqual(m.Cluster(dict(calib, links=dict(calib["links"], net={"alpha": 0, "beta": 1})), 4, 4,
                                   "net").cpu_ranks, 1)
        self.assertAlmostEqual(m.compute_scale({"cores": 2, "compute_scale": {"1": 1.0, "2": 1.1}}, 4), 2.2)

    def test_cpu_floor(self):
        # 4 emulated nodes on 2 cores, a fast link whose bytes cost CPU: the step is at
        # least the 4 ranks' compute and network work over the 2 cores
        calib = {"links": {"local": {"alpha": 0.0, "beta": 0.0},
                           "net": {"alpha": 0.0, "beta": 1e-12, "emulated": True, "cpu_s_per_byte": 1e-8}},
                 "cores": 2}
        prof = two_layer_profile()
        r = m.simulate(prof, m.Cluster(calib, 4, 4, "net"), {"overlap": True, "algorithm": "ring", "compute_scale": 2.0})
        wire = 2 * 3 / 4 * 200 * 4  # an all-reduce of 200 floats at 4 ranks
        self.assertEqual(r["wire_bytes"], wire)
        self.assertAlmostEqual(r["median_step_ms"], 2 * (28 + 1e3 * wire * 1e-8))
        # not without the CPU cost
        calib["links"]["net"]["cpu_s_per_byte"] = 0.0
        r = m.simulate(prof, m.Cluster(calib, 4, 4, "net"), {"overlap": True, "algorithm": "ring", "compute_scale": 2.0})
        self.assertLess(r["median_step_ms"], 2 * 28 + 0.1)

    def test_tbf_burst(self):
        # an emulated link's token bucket (tbf's burst, 200 bytes here) fills while the
        # link is idle, and that many bytes then pass at once: each 100-float bucket
        # (400 bytes, 1 ms at the rate) starts after an idle link and saves 0.5 ms
        net = {"alpha": 0.0, "beta": 1e-3 / 400.0, "emulated": True, "burst_bytes": 200}
        calib = {"links": {"local": {"alpha": 0.0, "beta": 0.0}, "net": net}, "cores": 8}
        cfg = {"overlap": True, "bucket_mb": MB_PER_100, "algorithm": "ring"}
        r = m.simulate(two_layer_profile(), m.Cluster(calib, 2, 2, "net"), cfg)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20.5 + 2)
        self.assertAlmostEqual(r["comm_ms"], 1.0)
        # back to back, the second bucket finds the tokens spent: 30 ms a bucket, the
        # first (ready at 10) saves 15 and is done at 25, the second takes the full 30
        slow = dict(net, beta=30e-3 / 400.0)
        r = m.simulate(two_layer_profile(), m.Cluster(dict(calib, links=dict(calib["links"], net=slow)), 2, 2, "net"),
                       cfg)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 10 + 15 + 30 + 2)
        # ZeRO-1: each reduce-scatter (200 bytes) passes whole on the refilled bucket; the
        # first all-gather too (the optimiser's 1 ms refills it), the second pays 0.5 ms
        r = m.simulate(two_layer_profile(), m.Cluster(calib, 2, 2, "net"), dict(cfg, zero=1))
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20 + 1 + 0.5)
        # a real cluster's link (not emulated) has no such bucket
        real = dict(net, emulated=False)
        r = m.simulate(two_layer_profile(), m.Cluster(dict(calib, links=dict(calib["links"], net=real)), 2, 2, "net"),
                       cfg)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 21 + 2)

    def test_tc_burst(self):
        self.assertEqual(m.tc_burst_bytes("qdisc tbf 8310: root refcnt 3 rate 10Gbit burst 4998750b lat 20ms"),
                         4998750)
        self.assertEqual(m.tc_burst_bytes("qdisc tbf 1: root rate 1Mbit burst 64Kb lat 20.0ms"), 65536)
        self.assertEqual(m.tc_burst_bytes("qdisc tbf 1: root rate 1Gbit burst 2Mb lat 20.0ms"), 2 << 20)
        self.assertIsNone(m.tc_burst_bytes("qdisc noqueue 0: dev lo root refcnt 2"))

    def test_fused_update(self):
        # zero = 0 where 2 ranks fill 2 cores: after the whole backward, the
        # reduce-scatter half of the all-reduce's bytes (1 ms of its 2 for 200 floats),
        # with no progress thread beside the compute; the optimiser reads the peers'
        # means in place of the all-gather: its bytes (1 ms) are the optimiser's
        r = m.simulate(two_layer_profile(), cluster(1.0, cores=2), {"overlap": True, "bucket_mb": MB_PER_100})
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20 + 2 + 1 + 1)
        self.assertAlmostEqual(r["compute_ms"], 1 + 5 + 20 + 2 + 1)
        self.assertAlmostEqual(r["exposed_comm_ms"], 1.0)
        self.assertEqual(r["wire_bytes"], 0)
        # and its two barriers, one latency step each
        c = cluster(1.0, cores=2)
        c.local = dict(c.local, alpha=1e-4)
        r = m.simulate(two_layer_profile(), c, {"overlap": True})
        self.assertAlmostEqual(r["exposed_comm_ms"], 1.0 + 0.1 + 2 * 0.1)
        # not with spare cores (auto), ZeRO-1, a named point-to-point algorithm, or off
        for c, cfg in ((cluster(1.0, cores=8), {}), (cluster(1.0, cores=2), {"zero": 1}),
                       (cluster(1.0, cores=2), {"algorithm": "ring"}), (cluster(1.0, cores=2), {"fused_update": "off"})):
            self.assertFalse(m.fused_update(c, cfg), cfg)
        self.assertTrue(m.fused_update(cluster(1.0, cores=8), {"fused_update": "on"}))

    def test_one_rank_has_no_communication(self):
        r = m.simulate(two_layer_profile(), cluster(1.0, ranks=1), {"overlap": True, "algorithm": "ring"})
        self.assertEqual(r["comm_ms"], 0.0)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20 + 2)

    def test_compute_scale(self):
        r = m.simulate(two_layer_profile(), cluster(0.0), {"overlap": False, "algorithm": "ring",
                                                           "compute_scale": 2.0})
        self.assertAlmostEqual(r["median_step_ms"], 2 * (1 + 5 + 20 + 2))

    def test_rank_lag(self):
        # the slowest rank is 3 ms behind at a wait: the first bucket (ready 10 ms into
        # backward, 1 + 5 ms of data and forward before it, 15 ms a bucket) starts at 13
        # and the second follows it, done at 43; with ZeRO-0 the previous step's
        # optimiser is unsynchronised compute too (no change: the segment is longer
        # than the lag either way)
        cfg = {"overlap": True, "bucket_mb": MB_PER_100, "algorithm": "ring", "rank_lag_ms": 3.0}
        r = m.simulate(two_layer_profile(), cluster(15.0), cfg)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 43 + 2)
        # compute-bound: the wait at the end of backward is for the slowest rank
        r = m.simulate(two_layer_profile(), cluster(0.001), cfg)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 23 + 2, places=2)
        # ZeRO-1: the second reduce-scatter (0.5 ms) starts at 23; the all-gathers (0.5
        # ms each) wait for the slowest rank's optimiser (1 ms at 2 ranks: a segment
        # shorter than the lag lags by at most itself)
        z = dict(cfg, zero=1)
        r = m.simulate(two_layer_profile(), cluster(1.0), z)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 23.5 + 1 + 1 + 1.0)
        # one rank waits for nobody
        r = m.simulate(two_layer_profile(), cluster(1.0, ranks=1), cfg)
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20 + 2)
        # the fused update's barriers wait for it too
        r = m.simulate(two_layer_profile(), cluster(1.0, cores=2), {"overlap": True, "bucket_mb": MB_PER_100,
                                                                    "rank_lag_ms": 3.0})
        self.assertAlmostEqual(r["median_step_ms"], 1 + 5 + 20 + 2 + 1 + 1 + 3)

    def test_calibrated_lag_and_scale(self):
        calib = {"cores": 2, "compute_scale": {"1": 1.0, "2": 1.1, "4": 1.9}, "rank_lag_ms": {"2": 0.2, "4": 3.0}}
        # measured where it was measured, time-shared beyond
        self.assertAlmostEqual(m.compute_scale(calib, 4), 1.9)
        self.assertAlmostEqual(m.compute_scale(calib, 3), 1.65)
        self.assertAlmostEqual(m.compute_scale(calib, 8), 4.4)
        # the most ranks measured up to the count; none for one rank or an old calibration
        self.assertEqual([m.rank_lag_ms(calib, k) for k in (1, 2, 3, 4, 8)], [0.0, 0.2, 0.2, 3.0, 3.0])
        self.assertEqual(m.rank_lag_ms({"cores": 2}, 4), 0.0)

    def test_profile_of_the_median_run(self):
        # repeats of the one-rank run: the profile is the median run's, so that the
        # prediction at one rank is the measured median and not the first run's
        def run(step_ms):
            return [{"event": "profile_layer", "order": 0, "backward_ms": 1.0, "lo": 0, "hi": 10},
                    {"event": "profile", "params": 10, "batch": 8, "forward_ms": 1.0, "backward_ms": 1.0,
                     "optimizer_ms": 1.0, "data_ms": 1.0, "step_ms": step_ms}]
        for steps, want in (([12.0, 8.0, 10.0], 10.0), ([9.0], 9.0), ([11.0, 7.0, 9.0, 13.0], 9.0)):
            prof = m.median_profile([run(t) for t in steps])
            got = prof["forward_ms"] + prof["optimizer_ms"] + prof["data_ms"] + sum(l["ms"] for l in prof["backward"])
            self.assertAlmostEqual(got, want, msg=steps)
            self.assertEqual(len(prof["backward"]), 1)
        self.assertIsNone(m.median_profile([[{"event": "done"}]]))
        self.assertIsNone(m.median_profile([]))

    def test_buckets_follow_the_engine(self):
        # padded to the ranks, bucket length a multiple of the ranks, one bucket without overlap
        self.assertEqual(m.buckets(10, 4, 1e-9, True), [(0, 4), (4, 8), (8, 12)])
        self.assertEqual(m.buckets(10, 4, 1.0, False), [(0, 12)])
        self.assertEqual(m.buckets(0, 2, 1.0, True), [])

    def test_ready_times(self):
        bks = [(0, 100), (100, 200)]
        self.assertEqual(m.ready_times(two_layer_profile(), bks), [10.0, 20.0])
        # a layer without parameters (hi 0) moves time, not the frontier
        p = two_layer_profile()
        p["backward"].insert(0, {"ms": 3.0, "lo": 0, "hi": 0})
        self.assertEqual(m.ready_times(p, bks), [13.0, 23.0])


class Costs(unittest.TestCase):
    def test_ring_coefficients(self):
        self.assertEqual(m.coefficients("allreduce", "ring", 4, 400.0), (6.0, 600.0, 300.0))
        self.assertEqual(m.coefficients("allreduce", "rd", 4, 400.0), (2.0, 800.0, 800.0))
        self.assertEqual(m.coefficients("allreduce", "rd", 3, 400.0)[0], 4.0)  # folded in and out
        self.assertEqual(m.coefficients("allgather", "ring", 4, 400.0), (3.0, 300.0, 0.0))

    def test_fit_skips_the_burst(self):
        # below min_bytes the "link" looks 10x faster (a tbf burst): left out of the fit
        small = [(8, 2e-4), (64, 2e-4)]  # 2 steps of 100 us
        burst = [(1 << 12, 1e-6), (1 << 14, 2e-6)]
        large = [(b, 2e-4 + b * 1e-8) for b in (1 << 20, 1 << 22, 1 << 24)]
        a, b, res = m.fit_link(small, burst + large, "allreduce", "ring", 2, min_bytes=1 << 20)
        self.assertAlmostEqual(a, 1e-4, delta=1e-12)
        self.assertAlmostEqual(b, 1e-8, delta=1e-15)  # wire = B at 2 ranks
        self.assertEqual(len(res), 3)
        self.assertLess(max(abs(x) for x in res), 1e-9)

    def test_fit_link(self):
        # latency from the tiny sizes, bandwidth through it from the large ones
        alpha, beta = 30e-6, 1e-9
        t = lambda b: m.collective_time("allreduce", "ring", 2, b, {"alpha": alpha, "beta": beta}, 0.0)
        small = [(8, t(8)), (64, t(64))]
        large = [(b, t(b)) for b in (1 << 21, 1 << 23, 1 << 25)]
        a, b, res = m.fit_link(small, large, "allreduce", "ring", 2)
        self.assertAlmostEqual(a / alpha, 1.0, places=2)  # the tiny sizes carry a few bytes too
        self.assertAlmostEqual(b / beta, 1.0, places=3)
        with self.assertRaises(m.ModelError):
            m.fit_link(small, large[:1], "allreduce", "ring", 2)

    def test_beta_table(self):
        link = {"alpha": 0.0, "beta": 5.0, "beta_table": [[1 << 10, 1.0], [1 << 20, 3.0]]}
        self.assertEqual(m.link_beta(link, 1), 1.0)           # clamped below
        self.assertEqual(m.link_beta(link, 1 << 30), 3.0)     # and above
        self.assertAlmostEqual(m.link_beta(link, 1 << 15), 2.0)  # halfway in log size
        self.assertEqual(m.link_beta({"alpha": 0, "beta": 5.0}, 1 << 15), 5.0)
        tab = m.beta_table([(1 << 20, 2e-3), (1 << 10, 1e-5)], "allgather", "ring", 2, 0.0)
        self.assertEqual([b for b, _ in tab], [1 << 10, 1 << 20])
        self.assertAlmostEqual(tab[1][1], 2e-3 / (1 << 19))

    def test_fit_needs_sizes(self):
        with self.assertRaises(m.ModelError):
            m.fit_link([], [(1 << 20, 1.0), (1 << 21, 2.0)], "allreduce", "ring", 2)
        with self.assertRaises(m.ModelError):
            m.fit_link([(8, 1.0)], [(1 << 20, 1.0), (1 << 21, 2.0)], "allreduce", "ring", 2, min_bytes=1 << 21)

    def test_hier_shares_the_link(self):
        calib = {"links": {"local": {"alpha": 0.0, "beta": 0.0}, "net": {"alpha": 0.0, "beta": 1e-9}}, "gamma": 0.0,
                 "cores": 8}
        flat = m.Cluster(calib, 4, 2, "net").time("allreduce", "ring", 1 << 20)
        hier = m.Cluster(calib, 4, 2, "net").time("allreduce", "hier", 1 << 20)
        # flat: 2(P-1)/P B over a link shared by 2 ranks = 3 B beta; hier: the shard of B/2
        # over the 2-node ring (B/2 wire) with 2 shards sharing the link = B beta
        self.assertAlmostEqual(flat, 3 * (1 << 20) * 1e-9)
        self.assertAlmostEqual(hier, (1 << 20) * 1e-9)

    def test_hier_segments_overlap(self):
        # 8 MiB: 4 segments of 2 MiB (collectives/hier.c); the node stages (local beta)
        # hide behind the link but for one segment's worth; at 2 MiB they add up
        calib = {"links": {"local": {"alpha": 0.0, "beta": 1e-11}, "net": {"alpha": 0.0, "beta": 1e-9}},
                 "gamma": 0.0, "cores": 8}
        c = m.Cluster(calib, 4, 2, "net")
        for nbytes, segs in ((8 << 20, 4), (2 << 20, 1)):
            inside = m.collective_time("reduce_scatter", "shm", 2, nbytes, calib["links"]["local"], 0.0) + \
                m.collective_time("allgather", "shm", 2, nbytes, calib["links"]["local"], 0.0)
            across = nbytes * 1e-9  # the B/2 shard's ring across 2 nodes, 2 shards sharing the link
            want = across + inside / segs if segs > 1 else across + inside
            self.assertAlmostEqual(c.idle_time("allreduce", "hier", nbytes), want)
            self.assertGreater(inside, 0)

    def test_link_for_an_unseen_rate(self):
        calib = {"links": {"local": {"alpha": 0, "beta": 0},
                           "1gbit": {"alpha": 40e-6, "beta": 8e-9 / 0.9, "emulated": True},
                           "10gbit": {"alpha": 20e-6, "beta": 8e-10 / 0.8, "emulated": True}}}
        l = m.link_for(calib, "2500mbit")
        self.assertAlmostEqual(l["beta"], 8.0 / 2.5e9 / 0.9)  # the median efficiency (of two: the upper)
        self.assertEqual(l["alpha"], 40e-6)
        self.assertTrue(l["emulated"])
        self.assertNotIn("cpu_s_per_byte", l)  # none calibrated: none made up
        self.assertNotIn("burst_bytes", l)
        # tbf's burst is the same time at every rate (launch/vcluster: 4 ms of traffic)
        calib["links"]["1gbit"]["burst_bytes"] = 500000
        calib["links"]["10gbit"]["burst_bytes"] = 5000000
        self.assertAlmostEqual(m.link_for(calib, "2500mbit")["burst_bytes"], 1250000)
        # the network stack's CPU work per byte: the least of the calibrated rates'
        # (the slower links' figures also hold their ranks' polling while they wait)
        calib["links"]["1gbit"]["cpu_s_per_byte"] = 2e-9
        calib["links"]["10gbit"]["cpu_s_per_byte"] = 1e-9
        for rate in ("2500mbit", "100mbit", "40gbit"):
            self.assertAlmostEqual(m.link_for(calib, rate)["cpu_s_per_byte"], 1e-9)
        self.assertIs(m.link_for(calib, "1gbit"), calib["links"]["1gbit"])
        real = m.link_for(calib, "400gbit", latency_us=2.0)
        self.assertEqual((real["alpha"], real["beta"]), (2e-6, 8.0 / 400e9))
        self.assertNotIn("emulated", real)
        with self.assertRaises(m.ModelError):
            m.link_for({"links": {"local": {"alpha": 0, "beta": 0}}}, "2500mbit")
        with self.assertRaises(m.ModelError):
            m.link_for(calib, "fast")

    def test_bad_cluster(self):
        with self.assertRaises(m.ModelError):
            m.Cluster({"links": {"local": {"alpha": 0, "beta": 0}}}, 3, 2, None)
        with self.assertRaises(m.ModelError):
            m.Cluster({"links": {"local": {"alpha": 0, "beta": 0}}}, 4, 2, "10gbit")


class Cli(unittest.TestCase):
    def run_predict(self, *args):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "predict")] + list(args),
                           capture_output=True, text=True)
        return p.returncode, p.stdout, p.stderr

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.calib = os.path.join(d, "calib.json")
        with open(self.calib, "w") as f:
            json.dump({"cores": 2, "links": {"local": {"alpha": 1e-6, "beta": 1e-10}}, "gamma": 1e-10}, f)
        self.prof = os.path.join(d, "m.jsonl")
        with open(self.prof, "w") as f:
            f.write('{"event":"profile_layer","order":0,"node":1,"kind":"linear","forward_ms":1,"backward_ms":2,'
                    '"lo":0,"hi":1000}\n')
            f.write('{"event":"profile","steps":10,"batch":8,"ranks":1,"params":1000,"forward_ms":1,'
                    '"backward_ms":2,"optimizer_ms":0.5,"data_ms":0.1,"step_ms":3.6}\n')

    def tearDown(self):
        self.tmp.cleanup()

    def test_prints_csv(self):
        rc, out, err = self.run_predict("--calib", self.calib, "--profile", self.prof, "--ranks", "1,2")
        self.assertEqual(rc, 0, err)
        lines = out.strip().split("\n")
        self.assertTrue(lines[0].startswith("ranks,nodes,link_rate,algorithm,overlap,median_step_ms"))
        self.assertEqual(len(lines), 3)
        self.assertEqual(lines[1].split(",")[10], "1.0000")  # 1 rank: efficiency 1

    def test_missing_calibration(self):
        rc, _, err = self.run_predict("--calib", "/nonexistent.json", "--profile", self.prof)
        self.assertEqual(rc, 2)
        self.assertIn("--calib: cannot read /nonexistent.json", err)

    def test_unknown_key(self):
        with open(self.calib, "w") as f:
            json.dump({"links": {"local": {"alpha": 1, "beta": 1}}, "bogus": 1}, f)
        rc, _, err = self.run_predict("--calib", self.calib, "--profile", self.prof)
        self.assertEqual(rc, 2)
        self.assertIn("unknown key 'bogus'", err)

    def test_bad_link_number(self):
        # an optional figure of a link that is not a non-negative number is named, not a traceback
        for bad in ("lots", -1):
            with open(self.calib, "w") as f:
                json.dump({"links": {"local": {"alpha": 1, "beta": 1},
                                     "1gbit": {"alpha": 1, "beta": 1, "emulated": True, "burst_bytes": bad}}}, f)
            rc, _, err = self.run_predict("--calib", self.calib, "--profile", self.prof, "--nodes", "2",
                                          "--rate", "1gbit")
            self.assertEqual(rc, 2, err)
            self.assertIn("links.1gbit: 'burst_bytes' must be a number >= 0", err)

    def test_bad_rank_table(self):
        # compute_scale and rank_lag_ms are {rank count: number >= 0}; anything else is named
        for table, bad in (("rank_lag_ms", {"4": "slow"}), ("rank_lag_ms", {"four": 1.0}), ("compute_scale", {"2": -1}),
                           ("rank_lag_ms", [3.0])):
            with open(self.calib, "w") as f:
                json.dump({"links": {"local": {"alpha": 1, "beta": 1}}, table: bad}, f)
            rc, _, err = self.run_predict("--calib", self.calib, "--profile", self.prof, "--ranks", "2")
            self.assertEqual(rc, 2, err)
            self.assertIn(table, err)
            self.assertNotIn("Traceback", err)

    def test_link_not_calibrated(self):
        rc, _, err = self.run_predict("--calib", self.calib, "--profile", self.prof, "--nodes", "2",
                                      "--rate", "10gbit")
        self.assertEqual(rc, 2)
        self.assertIn("no link '10gbit'", err)  # no calibrated rate to derive it from
        rc, out, err = self.run_predict("--calib", self.calib, "--profile", self.prof, "--nodes", "2,1024",
                                        "--rate", "10gbit", "--latency-us", "20")
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(out.strip().split("\n")), 3)

    def test_profile_without_records(self):
        with open(self.prof, "w") as f:
            f.write('{"event":"done","ranks":1}\n')
        rc, _, err = self.run_predict("--calib", self.calib, "--profile", self.prof)
        self.assertEqual(rc, 2)
        self.assertIn("no profile records", err)

    def test_bad_lists(self):
        rc, _, err = self.run_predict("--calib", self.calib, "--profile", self.prof, "--algorithm", "magic")
        self.assertEqual(rc, 2)
        self.assertIn("--algorithm: 'magic'", err)
        rc, _, err = self.run_predict("--calib", self.calib, "--profile", self.prof, "--rate", "fast",
                                      "--latency-us", "1", "--nodes", "2")
        self.assertEqual(rc, 2)
        self.assertIn("not a rate", err)


if __name__ == "__main__":
    res = unittest.main(exit=False, verbosity=1).result
    failed = len(res.failures) + len(res.errors)
    print("test_predict: %d passed, %d failed" % (res.testsRun - failed, failed))
    sys.exit(1 if failed else 0)
