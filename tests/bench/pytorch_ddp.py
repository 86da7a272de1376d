#!/usr/bin/python3
"""PyTorch DDP (gloo) baseline for the weak-scaling benchmark (tests/bench/ddp-scaling).

    pytorch_ddp.py RANKS [--steps N] [--batch B] IN HIDDEN... OUT

Spawns RANKS processes on this machine, each with one thread and batch B, wraps the MLP
in DistributedDataParallel (gloo backend, default 25 MB buckets) and prints rank 0's
median step time after 20 warm-up steps.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torch_mlp import build_mlp


def worker(rank, a, store):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=a.ranks)
    torch.manual_seed(1)
    model = torch.nn.parallel.DistributedDataParallel(build_mlp(a.dims))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = a.batch * a.steps
    X = torch.randn(n, a.dims[0])
    Y = torch.randint(0, a.dims[-1], (n,))
    times = []
    for s in range(a.steps):
        t0 = time.perf_counter()
        x, y = X[s * a.batch:(s + 1) * a.batch], Y[s * a.batch:(s + 1) * a.batch]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        print("pytorch-ddp: %d ranks, median step %.3f ms" % (a.ranks, 1e3 * statistics.median(times[20:])))
    dist.destroy_process_group()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("ranks", type=int)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("dims", type=int, nargs="+")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    store = tempfile.mktemp(prefix="ddp-store-")
    mp.spawn(worker, args=(a, store), nprocs=a.ranks)
