#!/usr/bin/python3
"""Side-by-side CPU attention: PyTorch (written out, and its fused SDPA) against memattn.

Each implementation runs in its own process, so its peak RSS is its own (os.wait4). Times are
medians after a warm-up (enough calls for --min-seconds, at least 3); GFLOP/s follow FlashAttention-2's
convention: 4*B*H*N^2*d, halved for causal; forward+backward counts 3.5x the forward. "ratio" is
against the peak `memattn bench` measured in the same run for that dtype and thread count.
Usage and caveats: bench/peers/README.md.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

TORCH_IMPLS = ("torch-math", "torch-sdpa")
# For timing PyTorch, glibc keeps freed memory in the heap instead of returning it to the kernel (no
# mmap for big blocks, no trimming), so steady-state calls reuse pages already faulted in. Some VMs
# (this project's Firecracker machines: ~30 us per 4 KiB page, ~1 s to first-touch 128 MiB) make
# fresh pages so slow that the unfused attention's per-call score buffers would be timed instead of
# its arithmetic.
KEEP_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def csv(kind):
    def parse(text):
        try:
            values = [kind(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__}")
        return values
    return parse


def forward_flops(n, d, batch, heads, causal):
    return 4.0 * batch * heads * n * n * d / (2 if causal else 1)


def proc_status_bytes(key):
    """VmRSS / VmHWM of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return -1


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0) so the next VmHWM is the peak of what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def median_ms(step, min_seconds, warm):
    """Median ms of enough calls to fill min_seconds (at least 3), given the warm-up call's seconds."""
    reps = max(3, math.ceil(min_seconds / warm))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), reps


def torch_worker(a):
    """One implementation, one shape, one mode, in this process; prints one JSON object."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    g = torch.Generator().manual_seed(0)
    shape = (a.batch, a.heads, a.n, a.d)
    q, k, v = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
    train = a.mode == "fwd+bwd"
    dout = torch.randn(shape, generator=g).to(dtype) if train else None
    scale = 1.0 / math.sqrt(a.d)
    keep = torch.ones(a.n, a.n, dtype=torch.bool).tril() if a.causal else None

    def math_attention(q, k, v):
        s = (q @ k.transpose(-2, -1)) * scale
        if keep is not None:
            s = s.masked_fill(~keep, float("-inf"))
        return torch.softmax(s, dim=-1) @ v

    def sdpa(q, k, v):
        # PyTorch 1.13's private fused entry point: (q, k, v, attn_mask, dropout_p, need_attn_weights,
        # is_causal); it returns (out, weights).
        return F._scaled_dot_product_attention(q, k, v, None, 0.0, False, bool(a.causal))[0]

    attention = math_attention if a.impl == "torch-math" else sdpa
    if train:
        for t in (q, k, v):
            t.requires_grad_(True)

        def step():
            for t in (q, k, v):
                t.grad = None
            attention(q, k, v).backward(dout)
    else:
        def step():
            with torch.no_grad():
                attention(q, k, v)

    rss_known = reset_peak_rss()
    before = proc_status_bytes("VmRSS:")
    t0 = time.perf_counter()
    step()
    warm = time.perf_counter() - t0
    result = {"extra_rss_bytes": proc_status_bytes("VmHWM:") - before if rss_known else -1,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if not a.memory_only:
        result["ms"], result["reps"] = median_ms(step, a.min_seconds, warm)
    print(json.dumps(result))


def run_child(cmd, env=None):
    """Runs cmd in its own process; returns (exit code, stdout, stderr, peak RSS bytes)."""
    with tempfile.TemporaryFile(mode="w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        out = p.stdout.read()
        p.stdout.close()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return p.returncode, out, err.read(), usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def child_env(threads, keep_memory):
    """torch.set_num_threads sizes torch's OpenMP pool; OpenBLAS (pthread build) keeps its own."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    if keep_memory:
        env["GLIBC_TUNABLES"] = KEEP_MEMORY
    return env


def find_memattn(path):
    if path:
        return path
    candidates = [os.path.join(REPO, d, "memattn") for d in sorted(os.listdir(REPO)) if d.startswith("build")]
    candidates = [c for c in candidates if os.access(c, os.X_OK)]
    if not candidates:
        sys.exit("run_peers: no memattn binary under build*/; build it or pass --memattn PATH")
    return max(candidates, key=os.path.getmtime)


def memattn_runs(a, binary, shape, directions):
    """memattn bench --json for one shape: {direction: row}, plus its process's peak RSS."""
    n, d, causal, threads = shape
    cmd = [binary, "bench", "--json", "--n", str(n), "--d", str(d), "--batch", str(a.batch),
           "--heads", str(a.heads), "--threads", str(threads), "--dtype", a.dtype,
           "--causal", str(causal), "--direction", ",".join(directions),
           "--min-seconds", str(a.min_seconds)]
    rc, out, err, peak = run_child(cmd, child_env(threads, keep_memory=False))
    if rc != 0:
        return None, err.strip().splitlines()[-1] if err.strip() else f"exit code {rc}", peak
    return {r["direction"]: r for r in json.loads(out)}, None, peak


def torch_run(a, impl, mode, shape):
    """Times one PyTorch implementation in a child process and measures its memory in another.

    With KEEP_MEMORY the timing child's heap holds every freed buffer, so its RSS would count heap
    fragmentation; memory then comes from a second child, one call under glibc's default malloc.
    """
    n, d, causal, threads = shape
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--mode", mode, "--n", str(n),
           "--d", str(d), "--causal", str(causal), "--threads", str(threads), "--batch", str(a.batch),
           "--heads", str(a.heads), "--dtype", a.dtype, "--min-seconds", str(a.min_seconds)]
    result = {}
    passes = [(cmd, True), (cmd + ["--memory-only"], False)] if not a.plain_malloc else [(cmd, False)]
    for argv, keep in passes:
        rc, out, err, rss = run_child(argv, child_env(threads, keep))
        if rc != 0:
            return {"error": (err.strip().splitlines() or [f"exit code {rc}"])[-1]}
        result.update(json.loads(out), peak_rss_bytes=rss)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=csv(int), default=[4096])
    p.add_argument("--d", type=csv(int), default=[128])
    p.add_argument("--causal", type=csv(int), default=[0])
    p.add_argument("--threads", type=csv(int), default=[2])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dtype", choices=("f32", "bf16"), default="f32")
    p.add_argument("--backward", action="store_true", help="also forward+backward (torch autograd; "
                   "memattn forward + memattn backward)")
    p.add_argument("--impl", type=csv(str), default=list(TORCH_IMPLS) + ["memattn"])
    p.add_argument("--min-seconds", type=float, default=0.3)
    p.add_argument("--memattn", help="path of the memattn tool (default: the newest build*/memattn)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    p.add_argument("--plain-malloc", action="store_true",
                   help=f"time PyTorch under glibc's default malloc, not GLIBC_TUNABLES={KEEP_MEMORY}")
    p.add_argument("--worker", choices=TORCH_IMPLS, dest="impl_worker", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=("forward", "fwd+bwd"), default="forward", help=argparse.SUPPRESS)
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.impl_worker:  # child process: n, d, causal, threads hold one value each
        a.impl, a.n, a.d, a.causal, a.threads = a.impl_worker, a.n[0], a.d[0], a.causal[0], a.threads[0]
        return torch_worker(a)
    unknown = set(a.impl) - set(TORCH_IMPLS) - {"memattn"}
    if unknown:
        p.error(f"--impl: unknown {', '.join(sorted(unknown))} (expected torch-math, torch-sdpa, memattn)")
    binary = find_memattn(a.memattn)
    modes = ["forward"] + (["fwd+bwd"] if a.backward else [])
    rows = []
    for n in a.n:
        for d in a.d:
            for causal in a.causal:
                for threads in a.threads:
                    rows += measure_shape(a, binary, (n, d, causal, threads), modes)
                    print(f"run_peers: n={n} d={d} causal={causal} threads={threads} done", file=sys.stderr)
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows, binary, "glibc default" if a.plain_malloc else
                    f"PyTorch timed with GLIBC_TUNABLES={KEEP_MEMORY}, its memory measured by glibc's default")


def measure_shape(a, binary, shape, modes):
    """One row per implementation and mode for shape = (n, d, causal, threads)."""
    n, d, causal, threads = shape
    base = dict(n=n, d=d, causal=causal, threads=threads, dtype=a.dtype, batch=a.batch, heads=a.heads,
                io_bytes=4 * a.batch * a.heads * n * d * (4 if a.dtype == "f32" else 2))
    rows, peak = [], None
    if "memattn" in a.impl:
        runs, error, rss = memattn_runs(a, binary, shape, ["forward"] + (["backward"] if a.backward else []))
        if runs is None and a.backward:  # a build without backward: still compare the forward
            runs, error_fwd, rss = memattn_runs(a, binary, shape, ["forward"])
            error = error if runs is not None else error_fwd
        if runs is not None:
            peak = runs["forward"]["peak_gflops"]
        for mode in modes:
            row = dict(base, impl="memattn", mode=mode, peak_rss_bytes=rss)
            used = [r for dir_, r in (runs or {}).items() if dir_ == "forward" or mode == "fwd+bwd"]
            if runs is None or (mode == "fwd+bwd" and "backward" not in runs):
                row["error"] = error or "memattn backward was not run"
            else:
                row.update(ms=sum(r["ms"] for r in used), extra_rss_bytes=max(r["extra_rss_bytes"] for r in used),
                           workspace_bytes=max(r["workspace_bytes"] for r in used), target=used[0]["target"])
            rows.append(row)
    for impl in (i for i in a.impl if i in TORCH_IMPLS):
        for mode in modes:
            rows.append(dict(base, impl=impl, mode=mode, **torch_run(a, impl, mode, shape)))
    fwd = forward_flops(n, d, a.batch, a.heads, causal)
    for row in rows:
        if "ms" in row:
            row["gflops"] = fwd * (3.5 if row["mode"] == "fwd+bwd" else 1) / row["ms"] / 1e6
            row["peak_gflops"] = peak
            row["ratio"] = row["gflops"] / peak if peak else None
    return rows


def human_bytes(b):
    if b is None or b < 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if b >= 10 or unit == "B" else f"{b:.1f} {unit}"
        b /= 1024


def print_table(rows, binary, malloc):
    import platform
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    blas = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")
    print(f"CPU: {cpu}; memattn: {binary}")
    print(f"torch's BLAS: {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"malloc: {malloc}")
    print("ms = median after a warm-up; GFLOP/s = 4*B*H*N^2*d (causal /2; fwd+bwd x3.5) / time;")
    print("ratio = GFLOP/s / the peak memattn bench measured now (dtype, threads);")
    print("peak RSS = the whole process (os.wait4); extra = peak RSS during the calls minus the RSS before")
    print("them, inputs excluded (PyTorch: one call in a process of its own); workspace = what memattn")
    print("allocates for the call (memattn::workspace_bytes)\n")
    head = f"{'impl':<11} {'mode':<8} {'dtype':<5} {'n':>6} {'d':>4} {'B':>2} {'H':>3} {'causal':>6} {'thr':>3} " \
           f"{'ms':>10} {'GFLOP/s':>8} {'ratio':>6} {'peak RSS':>10} {'extra':>10} {'workspace':>10}"
    print(head)
    for r in rows:
        key = f"{r['impl']:<11} {r['mode']:<8} {r['dtype']:<5} {r['n']:>6} {r['d']:>4} {r['batch']:>2} " \
              f"{r['heads']:>3} {r['causal']:>6} {r['threads']:>3}"
        if "error" in r:
            print(f"{key} error: {r['error']}")
            continue
        ratio = f"{100 * r['ratio']:.1f}%" if r.get("ratio") else "-"
        print(f"{key} {r['ms']:>10.1f} {r['gflops']:>8.1f} {ratio:>6} {human_bytes(r['peak_rss_bytes']):>10} "
              f"{human_bytes(r.get('extra_rss_bytes')):>10} {human_bytes(r.get('workspace_bytes')):>10}")


if __name__ == "__main__":
    main()
