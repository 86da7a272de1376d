#!/usr/bin/python3
"""PyTorch baseline for the MLP step-time benchmark (tests/bench/train-vs-pytorch).

    pytorch_mlp.py [--steps N] [--batch B] IN HIDDEN... OUT

The same job as ddp-train's bench configs: an MLP with ReLU, softmax
cross-entropy, SGD with momentum 0.9, one thread, a batch gathered from a
shuffled synthetic set each step. Prints the median wall time of a whole
step (fetch, zero_grad, forward, backward, optimiser) after 20 warm-up steps.
"""
import argparse
import statistics
import time

import torch

from torch_mlp import build_mlp

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=300)
p.add_argument("--batch", type=int, default=64)
p.add_argument("dims", type=int, nargs="+")
a = p.parse_args()

torch.set_num_threads(1)
torch.manual_seed(1)
model = build_mlp(a.dims)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()
n = a.batch * a.steps
X = torch.randn(n, a.dims[0])
Y = torch.randint(0, a.dims[-1], (n,))
perm = torch.randperm(n)
times = []
for s in range(a.steps):
    t0 = time.perf_counter()
    idx = perm[s * a.batch:(s + 1) * a.batch]
    x, y = X[idx], Y[idx]
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
print("pytorch: %d steps, median step %.3f ms, torch %s, threads %d"
      % (a.steps, 1e3 * statistics.median(times[20:]), torch.__version__, torch.get_num_threads()))
