#!/usr/bin/python3
"""PyTorch baselines for ddp-train's GPT (tests/bench/gpt-vs-pytorch).

    pytorch_gpt.py bench [--config F] [--steps N]   configs/bench-gpt.ini's job: median step time
    pytorch_gpt.py char [--config F] [--steps N]    configs/char-gpt.ini's job: validation loss after it

The model, data, batch, optimiser, schedule and steps are read from the config file.

The same model as [model] arch = gpt: GPT-2's layout (token + learned positional
embedding; per block pre-LayerNorm, attention from one q,k,v linear layer with an
output projection, residual, pre-LayerNorm, MLP of 4 x C with GELU (tanh), residual;
final LayerNorm; bias-free head tied to the token embedding), dropout 0; the same
initial distributions (N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layer)),
zero biases, LayerNorm 1 and 0); the same data (the corpus's bytes that occur as
tokens, the first 1 - val_fraction trains with random windows, the rest validates in
disjoint windows), AdamW with ddp-train's warm-up and cosine schedule; one thread.
Eager mode, as PyTorch 1.13 (Debian's python3-torch) runs it.
"""
import argparse
import math
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln1, self.qkv, self.proj = nn.LayerNorm(C), nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.ln2, self.fc, self.out = nn.LayerNorm(C), nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x, mask):
        B, T, C = x.shape
        hs = C // self.H
        q, k, v = (t.view(B, T, self.H, hs).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(C, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(mask[:T, :T], float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, C, H, L, tie=True):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Parameter(torch.zeros(T, C))
        self.blocks = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f, self.head = nn.LayerNorm(C), nn.Linear(C, V, bias=False)
        self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.wpe, 0.0, 0.02)
        for b in self.blocks:
            nn.init.normal_(b.proj.weight, 0.0, 0.02 / math.sqrt(2 * L))
            nn.init.normal_(b.out.weight, 0.0, 0.02 / math.sqrt(2 * L))
        if tie:
            self.head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe[: idx.shape[1]]
        for b in self.blocks:
            x = b(x, self.mask)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def read_corpus(path):
    """The file, or a directory's regular files in name order without those holding a NUL byte."""
    if not os.path.isdir(path):
        return open(path, "rb").read()
    out = b""
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name)
        if os.path.isfile(f) and not os.path.islink(f):
            data = open(f, "rb").read()
            if b"\0" not in data:
                out += data
    return out


def lr_at(step, total, lr, warmup, min_lr, cosine):
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if not cosine or total <= warmup:
        return lr
    f = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * f))


def read_config(path):
    """The keys of a ddp-train INI file that shape this job, with config.c's defaults."""
    import configparser
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",))
    if not ini.read(path):
        raise SystemExit("pytorch_gpt.py: cannot read %s" % path)
    get = lambda sec, key, d: ini.get(sec, key, fallback=d)
    c = {
        "L": int(get("model", "n_layer", 4)), "H": int(get("model", "n_head", 4)), "C": int(get("model", "n_embd", 256)),
        "T": int(get("model", "block_size", 128)), "tie": get("model", "tie_embeddings", "true") == "true",
        "dropout": float(get("model", "dropout", 0)), "dataset": get("data", "dataset", "fashion-mnist"),
        "path": get("data", "path", ""), "val_fraction": float(get("data", "val_fraction", 0.1)),
        "classes": int(get("data", "classes", 10)), "train_size": int(get("data", "train_size", 10000)),
        "B": int(get("data", "batch_size", 64)), "optim": get("optim", "name", "sgd"), "lr": float(get("optim", "lr", 0.01)),
        "beta1": float(get("optim", "beta1", 0.9)), "beta2": float(get("optim", "beta2", 0.999)),
        "eps": float(get("optim", "eps", 1e-8)), "wd": float(get("optim", "weight_decay", 0)),
        "cosine": get("optim", "schedule", "constant") == "cosine", "warmup": int(get("optim", "warmup_steps", 0)),
        "min_lr": float(get("optim", "min_lr", 0)), "steps": int(get("train", "max_steps", 0)),
    }
    if c["optim"] != "adamw" or c["dropout"] != 0 or c["steps"] < 1:
        raise SystemExit("pytorch_gpt.py: %s: needs [optim] name = adamw, no dropout and [train] max_steps" % path)
    return c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("job", choices=["bench", "char"])
    p.add_argument("--config", help="default: configs/bench-gpt.ini or configs/char-gpt.ini")
    p.add_argument("--steps", type=int, help="default: the config's [train] max_steps")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    c = read_config(a.config or ("configs/bench-gpt.ini" if a.job == "bench" else "configs/char-gpt.ini"))
    steps = a.steps or c["steps"]
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    if c["dataset"] == "text":
        raw = read_corpus(c["path"])
        vocab = sorted(set(raw))
        lut = [0] * 256
        for i, b in enumerate(vocab):
            lut[b] = i
        ids = torch.frombuffer(bytearray(raw.translate(bytes(lut))), dtype=torch.uint8).long()
        V = len(vocab)
    else:  # synthetic tokens: timing only, any stream will do
        V = c["classes"]
        ids = torch.randint(0, V, (c["train_size"],))
    nval = int(len(ids) * c["val_fraction"])
    train, val = ids[: len(ids) - nval], ids[len(ids) - nval:]
    T, B = c["T"], c["B"]
    model = GPT(V, T, c["C"], c["H"], c["L"], c["tie"])
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"],
                            weight_decay=c["wd"])
    times, t0 = [], time.perf_counter()
    for s in range(steps):
        t1 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(s, steps, c["lr"], c["warmup"], c["min_lr"], c["cosine"])
        ix = torch.randint(0, len(train) - T, (B,))
        x = torch.stack([train[i:i + T] for i in ix])
        y = torch.stack([train[i + 1:i + T + 1] for i in ix])
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t1)
        if a.job == "char" and (s + 1) % 100 == 0:
            print("step %d loss %.4f" % (s + 1, loss.item()), flush=True)
    if a.job == "bench":
        print("pytorch: %d steps, median step %.3f ms, torch %s, threads %d"
              % (steps, 1e3 * statistics.median(times[min(5, steps - 1):]), torch.__version__, torch.get_num_threads()))
        return
    n = (len(val) - 1) // T
    with torch.no_grad():
        tot = 0.0
        for i in range(0, n, B):
            k = min(B, n - i)
            x = torch.stack([val[(i + j) * T:(i + j) * T + T] for j in range(k)])
            y = torch.stack([val[(i + j) * T + 1:(i + j) * T + T + 1] for j in range(k)])
            tot += model(x, y).item() * k
    vl = tot / n
    print("pytorch: %d steps, validation loss %.4f (%.4f bits per byte), %d windows, %.0f s, torch %s"
          % (steps, vl, vl / math.log(2), n, time.perf_counter() - t0, torch.__version__))


if __name__ == "__main__":
    main()
