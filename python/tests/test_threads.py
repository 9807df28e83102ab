"""Threads: the GIL is released while the kernel runs, and concurrent memattn calls beside
torch's own OpenMP work neither deadlock nor change a single bit of the results."""
import threading
import time

import numpy as np
import pytest

import memattn
from conftest import randn

DEADLOCK_TIMEOUT_S = 300  # far beyond the seconds the work takes on a loaded 2-core machine


def operands_taking(rng, seconds):
    """f32 [1, 512, H, 64] q, k, v with H chosen so that one single-threaded call takes about
    `seconds` (measured here, so the test adapts to the machine)."""
    probe = [randn(rng, (1, 512, 1, 64)).astype(np.float32) for _ in range(3)]
    start = time.perf_counter()
    memattn.attention(*probe, num_threads=1)
    heads = int(np.clip(seconds / max(time.perf_counter() - start, 1e-6), 1, 256))
    return [randn(rng, (1, 512, heads, 64)).astype(np.float32) for _ in range(3)]


def test_gil_is_released_while_the_kernel_runs(rng):
    """A Python thread keeps running (taking the GIL) during the middle of a long call. With the
    GIL held by the call it could only run just before the call enters C++ or after it returns."""
    q, k, v = operands_taking(rng, 0.3)
    ticks, stop = [], threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        start = time.perf_counter()
        memattn.attention(q, k, v, num_threads=1)
        end = time.perf_counter()
    finally:
        stop.set()
        thread.join(DEADLOCK_TIMEOUT_S)
    margin = 0.2 * (end - start)
    inside = [t for t in ticks if start + margin < t < end - margin]
    assert end - start > 0.05, "the call was too short to show anything"
    assert inside, (f"no Python thread ran during the middle of a {end - start:.3f} s call: "
                    f"the GIL is held while the kernel runs")


def run_threads(targets):
    """Starts one daemon thread per callable, waits for all, and fails on a hang or an error."""
    errors = []

    def guarded(target):
        try:
            target()
        except BaseException as e:  # reported to the test below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLOCK_TIMEOUT_S
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"threads still running after {DEADLOCK_TIMEOUT_S} s"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("num_threads", [0, 2])
def test_concurrent_calls_beside_torch_work_match_serial_results(rng, num_threads):
    torch = pytest.importorskip("torch")
    problems = []
    for seq in (300, 257):
        q, k, v = (torch.from_numpy(randn(rng, (2, seq, 4, 32)).astype(np.float32)) for _ in range(3))
        options = {"causal": True, "num_threads": num_threads}
        problems.append(((q, k, v), options, memattn.attention(q, k, v, **options)))
    done = threading.Event()

    def torch_work():
        a = torch.randn(192, 192)
        while not done.is_set():
            a = torch.tanh(a @ a)

    def memattn_work(args, options, expected):
        for _ in range(4):
            got, lse = memattn.attention(*args, return_lse=True, **options)
            assert torch.equal(got, expected), "a concurrent call gave different bits"
            grads = memattn.attention_backward(*args, got, got, lse, **options)
            assert all(torch.isfinite(g).all() for g in grads)

    workers = [lambda p=p: memattn_work(*p) for p in problems]
    torch_threads = [threading.Thread(target=torch_work, daemon=True) for _ in range(2)]
    for t in torch_threads:
        t.start()
    try:
        run_threads(workers)
    finally:
        done.set()
        for t in torch_threads:
            t.join(DEADLOCK_TIMEOUT_S)
    assert not any(t.is_alive() for t in torch_threads)


def test_concurrent_numpy_calls_with_all_threads_match_serial_results(rng):
    q, k, v = (randn(rng, (1, 400, 4, 32)).astype(np.float32) for _ in range(3))
    expected = memattn.attention(q, k, v, window=(64, 0))

    def work():
        for _ in range(4):
            assert np.array_equal(memattn.attention(q, k, v, window=(64, 0)), expected)

    run_threads([work, work, work])
