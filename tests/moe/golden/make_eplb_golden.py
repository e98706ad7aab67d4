#!/usr/bin/env python3
"""Golden placements from DeepSeek's reference EPLB (deepseek-ai/EPLB eplb.py) for tests/moe/eplb_test.cpp.

Usage: make_eplb_golden.py PATH/TO/EPLB [OUT_DIR]
  PATH/TO/EPLB is a checkout of github.com/deepseek-ai/EPLB (its eplb.py is imported from there and
  never copied into this repository). Needs PyTorch (Debian: python3-torch; CPU is enough).

Writes OUT_DIR (default: this folder)/eplb_golden.json:
  "exact": small cases whose maps must match the reference exactly. A case is kept only if it is
           tie-free: its loads are distinct, and running the reference in float64 gives the same maps
           as the float32 entry point (so rounding and the order torch.sort gives to equal keys
           cannot decide the answer).
  "random": 50 random and Zipf load matrices (2 layers x 256 experts; 4/8/32/72 GPUs; 0/16/32
           redundant), integer counts with ties, and the reference's balancedness on each: the C++
           placement must never be less balanced.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import torch


def load_eplb(path):
    spec = importlib.util.spec_from_file_location("eplb", os.path.join(path, "eplb.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def balancedness(weight, phy2log, num_gpus):
    """Mean over loaded layers of mean/max GPU load, each expert's load split evenly over its copies."""
    vals = []
    for l in range(weight.shape[0]):
        p2l = phy2log[l]
        copies = np.bincount(p2l, minlength=weight.shape[1])
        per_gpu = len(p2l) // num_gpus
        gpu = np.zeros(num_gpus)
        for p, e in enumerate(p2l):
            gpu[p // per_gpu] += weight[l, e] / copies[e]
        if gpu.max() > 0:
            vals.append(gpu.mean() / gpu.max())
    return float(np.mean(vals)) if vals else 1.0


def reference(eplb, weight, num_physical, groups, nodes, gpus):
    p2l, l2p, cnt = eplb.rebalance_experts(torch.tensor(weight), num_physical, groups, nodes, gpus)
    return p2l.tolist(), l2p.tolist(), cnt.tolist()


def tie_free(eplb, weight, num_physical, groups, nodes, gpus):
    if any(len(set(row)) != len(row) for row in weight.tolist()):
        return False
    g, n = (groups, nodes) if groups % nodes == 0 else (1, 1)
    p32, r32, c32 = eplb.rebalance_experts_hierarchical(torch.tensor(weight, dtype=torch.float32), num_physical, g, n, gpus)
    p64, r64, c64 = eplb.rebalance_experts_hierarchical(torch.tensor(weight, dtype=torch.float64), num_physical, g, n, gpus)
    return torch.equal(p32, p64) and torch.equal(r32, r64) and torch.equal(c32, c64)


def main():
    eplb = load_eplb(sys.argv[1])
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", sys.argv[1], "rev-parse", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    rng = np.random.default_rng(20251203)

    # (layers, experts, groups, nodes, gpus, redundant)
    shapes = [
        (3, 16, 4, 2, 4, 4),
        (4, 32, 8, 2, 8, 8),
        (2, 64, 8, 4, 8, 0),
        (2, 64, 8, 1, 4, 16),   # hierarchical on one node: groups are still reordered by load
        (3, 32, 4, 3, 6, 4),    # groups % nodes != 0: auto falls back to the global policy
        (2, 48, 6, 2, 12, 12),
        (2, 256, 8, 4, 32, 32),  # DeepSeek-V3 experts, prefill-like EP
        (2, 256, 8, 9, 72, 32),  # DeepSeek-V3 decode-like EP 72
    ]
    exact = []
    for (layers, experts, groups, nodes, gpus, redundant) in shapes:
        for kind in ("uniform", "zipf"):
            for attempt in range(20):
                if kind == "uniform":
                    w = rng.uniform(1.0, 1000.0, size=(layers, experts))
                else:
                    w = np.stack([rng.permutation(1000.0 / np.arange(1, experts + 1) ** 1.1) *
                                  rng.uniform(0.9, 1.1, size=experts) for _ in range(layers)])
                w = w.astype(np.float32)  # exactly representable in both languages
                num_physical = experts + redundant
                if tie_free(eplb, w, num_physical, groups, nodes, gpus) and \
                        tie_free(eplb, w, num_physical, 1, 1, gpus):
                    break
            else:
                print(f"no tie-free case for {(layers, experts, groups, nodes, gpus, redundant)}", file=sys.stderr)
                continue
            wl = [[float(x) for x in row] for row in w]
            for algorithm, g, n in (("auto", groups, nodes), ("deepseek", 1, 1)):
                p2l, l2p, cnt = reference(eplb, w, num_physical, g, n, gpus)
                exact.append({
                    "name": f"{kind}_L{layers}_E{experts}_G{groups}_N{nodes}_gpus{gpus}_R{redundant}_{algorithm}",
                    "algorithm": algorithm, "num_groups": groups, "num_nodes": nodes, "num_gpus": gpus,
                    "num_physical_experts": num_physical, "weight": wl,
                    "physical_to_logical_map": p2l, "logical_to_physical_map": l2p, "logical_count": cnt,
                })

    random_cases = []
    configs = [(g, r) for g in (4, 8, 32, 72) for r in (0, 16, 32) if (256 + r) % g == 0]
    for i in range(50):
        gpus, redundant = configs[i % len(configs)]
        if i % 2 == 0:
            w = rng.integers(0, 2000, size=(2, 256))
        else:
            w = np.stack([rng.zipf(1.3, size=256).clip(max=100000) for _ in range(2)])
        num_physical = 256 + redundant
        nodes = max(1, gpus // 8)  # 8 GPUs per node; 72 GPUs = 9 nodes (auto: global)
        p2l, _, _ = reference(eplb, w.astype(np.float32), num_physical, 8, nodes, gpus)
        random_cases.append({
            "kind": "uniform" if i % 2 == 0 else "zipf", "num_groups": 8, "num_nodes": nodes, "num_gpus": gpus,
            "num_physical_experts": num_physical, "weight": w.tolist(),
            "reference_balancedness": balancedness(w.astype(np.float64), np.array(p2l), gpus),
        })

    out = {"generator": "tests/moe/golden/make_eplb_golden.py",
           "reference": f"deepseek-ai/EPLB eplb.py {commit}".strip(),
           "torch": torch.__version__, "exact": exact, "random": random_cases}
    path = os.path.join(out_dir, "eplb_golden.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}: {len(exact)} exact cases, {len(random_cases)} random cases")


if __name__ == "__main__":
    main()
