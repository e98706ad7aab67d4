#!/usr/bin/env python3
"""torch.save fixtures for the C++ .pt reader (tests/moe/expert_location_test.cpp).

Usage: make_pt_fixtures.py [OUT_DIR]   (needs PyTorch; Debian: python3-torch)

sglang_expert_distribution.pt: what SGLang's recorder dumps in stat mode (sglang-spec §7): a dict
  {"rank": 0, "logical_count": int64 [passes=2, layers=4, experts=8], "average_utilization_rate_over_window": None}
  with logical_count[b][l][e] = 1000*b + 10*l + e + (l == 2) * 5000 (a hot layer). SGLang's files
  hold CUDA tensors; this machine has no GPU, so the storages are tagged "cuda:0" through
  torch.serialization.register_package, which is exactly what torch.save writes for a CUDA tensor.
torch_types.pt: other things torch.save writes: int32 / float64 / bool tensors, a transposed
  (non-contiguous) view, a 0-d tensor, nested lists, tuples, floats, strings, None, a large int.
"""
import os
import sys

import torch


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    torch.serialization.register_package(1, lambda storage: "cuda:0", lambda storage, location: storage
                                         if location == "cuda:0" else None)
    b, l, e = torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(8), indexing="ij")
    count = (1000 * b + 10 * l + e + (l == 2) * 5000).to(torch.int64)
    torch.save({"rank": 0, "logical_count": count, "average_utilization_rate_over_window": None},
               os.path.join(out_dir, "sglang_expert_distribution.pt"))
    torch.serialization._package_registry.pop(0)  # back to real cpu tags

    base = torch.arange(6, dtype=torch.float64).reshape(2, 3) / 4
    torch.save({
        "i32": torch.tensor([[1, -2], [3, 4]], dtype=torch.int32),
        "f64_t": base.t(),  # [[0, .75], [.25, 1], [.5, 1.25]], strides (1, 3)
        "flags": torch.tensor([True, False]),
        "scalar": torch.tensor(7),
        "nested": {"list": [1, 2, [3]], "tuple": (4.5, "x"), "none": None, "big": 2 ** 40, "neg": -300},
    }, os.path.join(out_dir, "torch_types.pt"))
    print("wrote", out_dir)


if __name__ == "__main__":
    main()
