"""Per-call time of memattn.attention from Python (numpy, torch) against the C++ call, one run.

Usage: PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py [--tool build/memattn]
Times a tiny problem (batch 1, seq 16, 1 head, d 16, f32, 1 thread), where the call's fixed cost
dominates: the C++ figure comes from `memattn bench --json` at the same shape in a subprocess,
the Python figures from timeit in this process; the ratios are what to compare.
"""
import argparse
import json
import subprocess
import timeit

import numpy as np

import memattn


def python_us(q, k, v, out, repeat=7, number=20000):
    """Best per-call microseconds of memattn.attention writing into `out`."""
    call = lambda: memattn.attention(q, k, v, out=out, num_threads=1)
    return min(timeit.repeat(call, repeat=repeat, number=number)) / number * 1e6


def cxx_us(tool):
    """Per-call microseconds of memattn::forward at the same shape, from memattn bench."""
    rows = json.loads(subprocess.run(
        [tool, "bench", "--n", "16", "--d", "16", "--heads", "1", "--threads", "1", "--causal",
         "0", "--dtype", "f32", "--min-seconds", "1", "--json"],
        check=True, capture_output=True, text=True).stdout)
    return rows[0]["ms"] * 1e3, rows[0]["cpu"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", default="build/memattn", help="the memattn binary")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 16, 1, 16), dtype=np.float32) for _ in range(3))
    rows = [("numpy", python_us(q, k, v, np.empty_like(q)))]
    try:
        import torch
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        rows.append(("torch", python_us(tq, tk, tv, torch.empty_like(tq))))
    except ImportError:
        pass
    base, cpu = cxx_us(args.tool)
    print(f"cpu: {cpu}; shape [1, 16, 1, 16] f32, 1 thread")
    print(f"C++ memattn::forward      {base:6.1f} us/call  1.0x")
    for name, us in rows:
        print(f"memattn.attention {name:6s}  {us:6.1f} us/call  {us / base:.1f}x")


if __name__ == "__main__":
    main()
