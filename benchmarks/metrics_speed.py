"""Time SPR + AUROC (sort + searchsorted) against the reference's pairwise boolean matrix.

Run from the repository root:

    .venv/bin/python benchmarks/metrics_speed.py [--sizes 10000 100000 1000000] [--repeats 3]

For each n it draws random data with many ties (confidences rounded to two decimals, about 60%
correct), times ``spr`` + ``auroc`` from :mod:`caopd.evaluation.metrics` (median of the
repeats), and times the reference's formula -- ``mean(pos[:, None] > neg[None, :])`` and the
same with ``==`` for the ties -- where its ``n_correct x n_incorrect`` boolean matrix fits under
``--max-gb`` (else prints ``skipped (N GB)``). Where both run, it checks the values agree and
exits non-zero if they do not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from caopd.evaluation.metrics import auroc, spr


def _pairwise_reference(correct: np.ndarray, confidence: np.ndarray) -> tuple[float, float]:
    """SPR and AUROC via the full ``n_pos x n_neg`` boolean matrices (the reference's way)."""
    pos = confidence[correct == 1]
    neg = confidence[correct == 0]
    greater = float(np.mean(pos[:, None] > neg[None, :]))
    tied = float(np.mean(pos[:, None] == neg[None, :]))
    return greater, greater + 0.5 * tied


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=2.0,
                        help="skip the pairwise reference when its boolean matrix exceeds this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"{'n':>9}  {'ours spr+auroc (s)':>19}  {'pairwise ref (s)':>22}  {'agree':>5}")
    ok = True
    for n in args.sizes:
        rng = np.random.default_rng(args.seed + n)
        confidence = np.round(rng.random(n), 2)
        correct = (rng.random(n) < 0.3 + 0.5 * confidence).astype(np.float64)
        def ours_fn(c=correct, p=confidence):
            return spr(c, p), auroc(c, p)

        def ref_fn(c=correct, p=confidence):
            return _pairwise_reference(c, p)

        ours_s, ours = _median_time(ours_fn, args.repeats)
        n_pos = int(correct.sum())
        matrix_gb = n_pos * (n - n_pos) / 1e9  # one bool byte per pair
        if matrix_gb > args.max_gb:
            ref_text, agree = f"skipped ({matrix_gb:.1f} GB)", "-"
        else:
            ref_s, ref = _median_time(ref_fn, args.repeats)
            same = bool(np.allclose(ours, ref, rtol=0, atol=1e-12))
            ok &= same
            ref_text, agree = f"{ref_s:.4f}", "yes" if same else "NO"
        print(f"{n:>9}  {ours_s:>19.4f}  {ref_text:>22}  {agree:>5}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
