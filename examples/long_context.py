"""Causal attention forward and backward at n = 65536 through memattn.torch, in a few MB.

Usage: PYTHONPATH=<build>/python /usr/bin/python3 examples/long_context.py [--n N] [--d D]
                                                                           [--threads T] [--check]

It times memattn.torch.scaled_dot_product_attention (one head, f32, causal) forward and backward
with requires_grad inputs, and prints the process's peak resident memory increase (VmHWM) next
to the n^2 * 4 bytes PyTorch's own CPU attention materialises for the score matrix alone.
--check also compares a few output rows and their gradients with a float64 computation of those
rows only (cheap at any n); the exit status is 1 if they disagree. `--n 4096 --check` is the
quick mode for ctest (about a second). The default n = 65536 takes about 100 s of CPU time
(2 minutes on 2 busy shared cores), and its peak RSS increase is about 69 MiB, 64 MiB of which
are the output and the three gradients.
"""

import argparse
import math
import os
import resource
import time

import torch

import memattn.torch as mt


def reset_peak_rss() -> None:
    """Lowers the kernel's peak-RSS mark (VmHWM) to the current RSS, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak since process start is measured, which can only hide an increase


def peak_rss_bytes() -> int:
    """The process's peak resident set: VmHWM, or ru_maxrss (KiB on Linux) without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_rows(q, k, v, out, dout, rows) -> float:
    """Largest error of out[rows] and of dq[rows] against float64 on those rows only.

    Row i of causal attention depends on keys 0..i only, and dq[i] on row i's dout only, so a
    float64 recomputation of a few rows costs O(n d) each.
    """
    worst = 0.0
    scale = 1.0 / math.sqrt(q.shape[-1])
    for i in rows:
        qi = q.detach()[0, 0, i].double().requires_grad_()
        keys, values = k.detach()[0, 0, : i + 1].double(), v.detach()[0, 0, : i + 1].double()
        ref = torch.softmax(keys @ qi * scale, dim=0) @ values
        (dq_ref,) = torch.autograd.grad(ref, qi, dout[0, 0, i].double())
        worst = max(worst, (out.detach()[0, 0, i].double() - ref).abs().max().item(),
                    (q.grad[0, 0, i].double() - dq_ref).abs().max().item())
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65536, help="sequence length (default 65536)")
    parser.add_argument("--d", type=int, default=64, help="head dim (default 64)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch/memattn threads (default: all cores)")
    parser.add_argument("--check", action="store_true",
                        help="compare sample rows with float64; exit 1 on disagreement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    n, d = args.n, args.d

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, d, generator=g).requires_grad_() for _ in range(3))
    dout = torch.randn(1, 1, n, d, generator=g)
    operands = 7 * n * d * 4  # q, k, v, their gradients and dout
    reset_peak_rss()
    rss_before = peak_rss_bytes()

    start = time.perf_counter()
    out = mt.scaled_dot_product_attention(q, k, v, is_causal=True)
    forward_s = time.perf_counter() - start
    out.backward(dout)
    total_s = time.perf_counter() - start
    rss_increase = peak_rss_bytes() - rss_before

    print(f"causal attention, n = {n}, d = {d}, f32, one head, {torch.get_num_threads()} threads")
    print(f"  forward {forward_s:.2f} s, backward {total_s - forward_s:.2f} s")
    print(f"  peak RSS increase:     {human(rss_increase)} (out and the gradients "
          f"{human(4 * n * d * 4)} of it)")
    print(f"  PyTorch's score matrix alone (n^2 * 4 bytes): {human(n * n * 4)}; operands "
          f"{human(operands)}")
    if args.check:
        rows = sorted({0, 1, n // 3, n // 2, n - 1})
        error = check_rows(q, k, v, out, dout, rows)
        ok = error <= 1e-4  # f32 rows of this size agree with f64 to ~1e-6; 1e-4 catches any bug
        print(f"  max |memattn - float64| over rows {rows}: {error:.2e} ({'ok' if ok else 'FAIL'})")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
