#!/usr/bin/python3
"""PyTorch baseline for the CNN step time (tests/bench/train-vs-pytorch).

    pytorch_cnn.py [--steps N] [--batch B]

configs/fmnist-cnn.ini's model (the TensorFlow layers tutorial's "2 Conv+pooling":
conv 32 5x5 same, ReLU, max-pool 2, conv 64 5x5 same, ReLU, max-pool 2, linear 1024,
ReLU, dropout 0.4, linear 10), softmax cross-entropy, SGD with momentum 0.9 and weight
decay 5e-4, one thread, batches of 28x28 images gathered from a shuffled synthetic set.
Prints the median wall time of a whole step after 10 warm-up steps.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=100)
p.add_argument("--batch", type=int, default=64)
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(1)
model = nn.Sequential(
    nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(0.4), nn.Linear(1024, 10))
model.train()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
loss_fn = nn.CrossEntropyLoss()
n = a.batch * a.steps
X = torch.randn(n, 1, 28, 28)
Y = torch.randint(0, 10, (n,))
perm = torch.randperm(n)
times = []
for s in range(a.steps):
    t0 = time.perf_counter()
    idx = perm[s * a.batch:(s + 1) * a.batch]
    opt.zero_grad()
    loss_fn(model(X[idx]), Y[idx]).backward()
    opt.step()
    times.append(time.perf_counter() - t0)
print("pytorch: %d steps, median step %.3f ms, torch %s, threads %d"
      % (a.steps, 1e3 * statistics.median(times[10:]), torch.__version__, torch.get_num_threads()))
