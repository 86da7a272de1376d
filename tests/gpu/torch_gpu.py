#!/usr/bin/env python3
"""PyTorch baselines on the GPU for tests/gpu/run (PyTorch 2.x with CUDA).

    torch_gpu.py mlp BATCH        bench-mlp1024's step (784-1024-1024-10, ReLU, SGD momentum 0.9)
    torch_gpu.py cnn BATCH        the tutorial CNN's step (conv(32,5) relu maxpool(2) conv(64,5)
                                  relu maxpool(2) linear(1024) relu dropout(0.4) linear(10))
    torch_gpu.py gemm BATCH       the MLP step's matrix products alone (cuBLAS via torch.mm):
                                  the floor for bench-mlp1024's step
    torch_gpu.py memcpy BYTES     device-to-device copy bandwidth (GB/s): the limit for device all-reduce

Steps as ddp-train's: the batch copied from pinned host memory, forward,
backward, optimiser. FP32 (TF32 off, as ddp-train's default). Times N steps
after warm-up with one synchronisation at the end (throughput, as
ddp-train's steady-state median is), prints "ms/step X" or "GB/s X".
"""
import sys
import time

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")
what, arg = sys.argv[1], int(sys.argv[2])


def timed(fn, steps=200, warm=30):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def train_step(model, shape, batch):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs = [torch.randn(batch, *shape).pin_memory() for _ in range(2)]
    ys = [torch.randint(0, 10, (batch,)).pin_memory() for _ in range(2)]
    k = [0]

    def step():
        k[0] ^= 1
        x = xs[k[0]].to(dev, non_blocking=True)
        y = ys[k[0]].to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    return step


if what == "mlp":
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 1024), torch.nn.ReLU(),
                            torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10)).to(dev)
    print("ms/step %.4f" % (1e3 * timed(train_step(m, (1, 28, 28), arg))))
elif what == "cnn":
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(32, 64, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(7 * 7 * 64, 1024), torch.nn.ReLU(),
                            torch.nn.Dropout(0.4), torch.nn.Linear(1024, 10)).to(dev)
    print("ms/step %.4f" % (1e3 * timed(train_step(m, (1, 28, 28), arg))))
elif what == "gemm":
    B, dims = arg, [784, 1024, 1024, 10]
    mats = []
    for i in range(3):
        x = torch.randn(B, dims[i], device=dev)
        w = torch.randn(dims[i + 1], dims[i], device=dev)
        dy = torch.randn(B, dims[i + 1], device=dev)
        mats.append((x, w, dy))

    def gemms():
        for i, (x, w, dy) in enumerate(mats):
            torch.mm(x, w.t())            # forward
            torch.mm(dy.t(), x)           # weight gradient
            if i:
                torch.mm(dy, w)           # input gradient (not for the first layer)
    print("ms/step %.4f" % (1e3 * timed(gemms)))
elif what == "memcpy":
    n = arg // 4
    a = torch.empty(n, device=dev)
    b = torch.empty(n, device=dev)
    print("GB/s %.1f" % (arg / timed(lambda: b.copy_(a), steps=50, warm=5) / 1e9))
else:
    sys.exit("torch_gpu.py: unknown benchmark " + what)
