#!/usr/bin/env python3
"""libcoll's files must call each other in layers: a call goes down once
(api -> check -> select -> run -> algorithms -> transport), never back up.
Reads which object defines and which uses each global symbol (nm), builds
the file graph and fails on any cycle except the one allowed below.
Usage: layering.py OBJDIR (build/obj/collectives)."""
import collections
import glob
import os
import subprocess
import sys

# A hierarchical algorithm runs its stages through the algorithm table.
ALLOWED = [{"algos", "hier"}]


def graph(objdir):
    defs, uses = {}, {}
    for o in sorted(glob.glob(os.path.join(objdir, "*.o"))):
        f = os.path.basename(o)[:-2]
        out = subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout
        defs[f], uses[f] = set(), set()
        for line in out.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in "TDBR":
                defs[f].add(p[2])
            elif len(p) == 2 and p[0] == "U":
                uses[f].add(p[1])
    owner = {s: f for f, d in defs.items() for s in d}
    g = {f: sorted({owner[s] for s in u if s in owner and owner[s] != f}) for f, u in uses.items()}
    return g


def cycles(g):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            c = set()
            while True:
                w = stack.pop()
                on.discard(w)
                c.add(w)
                if w == v:
                    break
            if len(c) > 1:
                out.append(c)

    for v in g:
        if v not in index:
            visit(v)
    return out


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: layering.py OBJDIR (a directory of libcoll's object files)")
    g = graph(sys.argv[1])
    if len(g) < 10:
        sys.exit(f"layering: only {len(g)} object files in {sys.argv[1]}: not libcoll's build")
    for f in sorted(g):
        print(f"{f} -> {' '.join(g[f])}")
    bad = [c for c in cycles(g) if c not in ALLOWED]
    for c in bad:
        print("layering: these files call each other in a circle: " + " ".join(sorted(c)))
    print(f"layering: {len(g)} files, {len(bad)} circles")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
