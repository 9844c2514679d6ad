"""Peak memory and time of the distill loss, forward + backward: ours, full logits and TRL's.

Three implementations of Σ_i w_i · D(p_T,i ‖ p_S,i) from hidden states [N, H] and LM heads
[V, H] (float32, no bias), each giving the gradients of the student's hidden states and head:

- ``ours``: :func:`caopd.training.loss.chunked_divergence_loss` (gradients made in the forward,
  ``--chunk-size`` positions per chunk);
- ``full``: the plain autograd reference: full N×V logits, :func:`token_divergence`, backward;
- ``trl``: TRL's ``trl.kernels.chunked_divergence.ChunkedDivergenceFunction`` (its torch path
  on CPU; ``beta`` 0 / 1 / in between selects forward KL / reverse KL / JSD), if TRL is
  installed (``pip install -e .[bench]``).

Memory: every measurement runs in a fresh subprocess; "peak MiB" is ``ru_maxrss`` (the process's
peak resident set, which sees torch's CPU allocations, unlike tracemalloc) at the end minus the
resident set just before the first forward, i.e. what the loss and its backward add on top of
the inputs. Time: wall seconds and process CPU seconds (user + system) of that one forward +
backward (imports done before), with ``--threads`` torch threads (default 1: on a machine shared
with other jobs, more threads stall in OpenMP waits for descheduled threads, and CPU seconds
then measure the work, not the contention); with ``--repeats R`` every method
runs R times, interleaved, and the table gives medians and ratios to ``full`` (so a shared,
noisy machine slows every method alike).

A ``check`` worker computes the loss and gradients of ``--check-methods`` (default ours and
full) on the same inputs once per divergence and prints the largest differences to ``full``,
relative to the largest entry of each.

Run:
    python benchmarks/loss_memory_time.py                       # V=151,936, N=1,024, H=1,024
    python benchmarks/loss_memory_time.py --kinds forward_kl --repeats 3 --chunk-size 128
    python benchmarks/loss_memory_time.py --vocab 32000 --positions 256 --hidden 256  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

KINDS = ("forward_kl", "reverse_kl", "jsd")
TRL_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}


def _inputs(args):
    import torch

    gen = torch.Generator().manual_seed(0)
    n, h, v = args.positions, args.hidden, args.vocab
    scale = h**-0.5
    student_hidden = torch.randn(n, h, generator=gen).requires_grad_()
    teacher_hidden = torch.randn(n, h, generator=gen)
    # built in place: no transient copy of a head raises the process's peak before the loss
    student_head = torch.randn(v, h, generator=gen).mul_(scale).requires_grad_()
    teacher_head = torch.randn(v, h, generator=gen).mul_(0.1 * scale).add_(student_head.detach())
    weights = torch.ones(n)
    weights[:3] = 0.0  # the skipped first completion tokens
    return student_hidden, teacher_hidden, student_head, teacher_head, weights


def _loss(method: str, x, kind: str, args):
    """The summed loss of ``method`` on inputs ``x`` (graph built, not yet back-propagated)."""
    import torch

    student_hidden, teacher_hidden, student_head, teacher_head, weights = x
    if method == "ours":
        from caopd.training.divergence import DivergenceSpec
        from caopd.training.loss import chunked_divergence_loss

        loss, _ = chunked_divergence_loss(
            student_hidden, teacher_hidden, student_head, teacher_head, weights,
            DivergenceSpec(kind, args.beta), args.chunk_size,
        )
        return loss
    if method == "full":
        from caopd.training.divergence import token_divergence

        student_logits = student_hidden @ student_head.t()
        with torch.no_grad():
            teacher_logits = teacher_hidden @ teacher_head.t()
        return (weights * token_divergence(student_logits, teacher_logits, kind, args.beta)).sum()
    if method == "trl":
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        divergence, _ = ChunkedDivergenceFunction.apply(
            student_hidden, student_head, None, teacher_hidden, teacher_head, None,
            TRL_BETA.get(kind, args.beta),
        )
        return (weights * divergence).sum()
    raise ValueError(method)


def _resident_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(args) -> None:
    import torch

    import caopd.training.loss  # noqa: F401  (imports stay out of the timing)

    torch.set_num_threads(args.threads)

    if args.worker == "trl":
        import trl.kernels.chunked_divergence  # noqa: F401
    x = _inputs(args)
    before = _resident_kib()
    earlier_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if earlier_peak - before > 64 * 1024:
        raise RuntimeError(f"the peak before the loss is {(earlier_peak - before) / 1024:.0f} MiB "
                           "above the resident set: the measurement would hide the loss's peak")
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    loss = _loss(args.worker, x, args.kind, args)
    loss.backward()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_mib": (peak - before) / 1024, "seconds": seconds, "cpu": cpu,
                      "loss": loss.item()}))


def check(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    x = _inputs(args)
    results = {}
    for method in args.check_methods:
        x[0].grad = x[2].grad = None
        loss = _loss(method, x, args.kind, args)
        loss.backward()
        results[method] = (loss.detach().clone(), x[0].grad.clone(), x[2].grad.clone())
    ref = results["full"]

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

    print(json.dumps({m: [rel(got, want) for got, want in zip(r, ref)] for m, r in results.items()}))


def _run(args, extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, *extra, "--vocab", str(args.vocab), "--positions",
           str(args.positions), "--hidden", str(args.hidden), "--chunk-size",
           str(args.chunk_size), "--beta", str(args.beta), "--threads", str(args.threads),
           "--methods", *args.methods, "--check-methods", *args.check_methods]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=256, help="ours (config default 256)")
    parser.add_argument("--beta", type=float, default=0.5, help="jsd mixture weight")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--methods", nargs="+", default=["ours", "full", "trl"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per measurement (1: no OpenMP stalls on a shared machine)")
    parser.add_argument("--no-check", action="store_true")
    parser.add_argument("--check-methods", nargs="+", default=["ours", "full"],
                        help="methods whose loss and gradients are compared with full")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--check-kind", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if "trl" in args.methods:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not installed (pip install -e .[bench]): skipping it")
            args.methods = [m for m in args.methods if m != "trl"]
    if args.worker:
        return worker(args)
    if args.check_kind:
        args.kind = args.check_kind
        return check(args)
    if "full" not in args.methods or "full" not in args.check_methods:
        parser.error("--methods and --check-methods must include full (the reference)")
    args.check_methods = [m for m in args.check_methods if m in args.methods]

    import torch

    print(f"V={args.vocab:,} N={args.positions:,} H={args.hidden:,} float32 forward+backward, "
          f"chunk_size={args.chunk_size}, torch {torch.__version__}, "
          f"{args.threads} thread(s), repeats={args.repeats}; machine shared with other jobs")
    print("peak MiB = ru_maxrss of a fresh process minus its resident set before the first "
          "forward; wall / cpu = median wall and process CPU seconds of one forward+backward")
    print(f"{'divergence':<11} {'method':<5} {'peak MiB':>9} {'x full':>7} {'wall s':>8} "
          f"{'x full':>7} {'cpu s':>8} {'x full':>7} {'loss':>14}")
    for kind in args.kinds:
        runs: dict[str, list[dict]] = {m: [] for m in args.methods}
        for _ in range(args.repeats):
            for method in args.methods:
                runs[method].append(_run(args, ["--worker", method, "--kind", kind]))
        peak = {m: max(r["peak_mib"] for r in rs) for m, rs in runs.items()}
        secs = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
        cpu = {m: statistics.median(r["cpu"] for r in rs) for m, rs in runs.items()}
        for method in args.methods:
            print(f"{kind:<11} {method:<5} {peak[method]:>9.0f} {peak[method] / peak['full']:>7.2f} "
                  f"{secs[method]:>8.2f} {secs[method] / secs['full']:>7.2f} "
                  f"{cpu[method]:>8.2f} {cpu[method] / cpu['full']:>7.2f} "
                  f"{runs[method][-1]['loss']:>14.6f}", flush=True)
        if not args.no_check:
            diffs = _run(args, ["--check-kind", kind])
            print(f"{kind:<11} max relative difference to full (loss, d hidden, d head): "
                  + ", ".join(f"{m} {', '.join(f'{d:.1e}' for d in ds)}"
                              for m, ds in diffs.items() if m != "full"), flush=True)


if __name__ == "__main__":
    main()
