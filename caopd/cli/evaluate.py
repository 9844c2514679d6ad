"""``caopd evaluate``: score a file of model responses with a task's verifier.

``caopd evaluate PREDICTIONS --task {arith,science,tooluse} [--out metrics.json]
[--n-bins 10] [--bootstrap 1000] [--seed 0]``
    Verify and score a file of model responses and print the calibration metrics (DESIGN §8)
    as JSON; ``--out`` also writes them (atomically). Example::

        caopd evaluate preds.jsonl --task science --out metrics.json
        python -m caopd.cli evaluate preds.jsonl --task science     # without the entry point

    PREDICTIONS is JSONL (one object per line; blank lines are skipped) or one JSON list of
    objects. Each row needs a response and a ground truth; the first key present is used:

    - response: ``response``, ``output``, ``completion``, ``generated_text`` (a string);
    - ground truth: ``ground_truth``, ``answer``, ``golden_answer``, ``label``. A string is
      used as is. The reference ``run_eval_*.py`` lists are accepted: ``[{"Answer": "B"}]``
      (chemistry) becomes ``"B"``, a list of ``{"Action", "Action_Input"}`` (tool use)
      becomes its ``json.dumps``.
    - optional ``prompt_id`` (or ``question_id``): when present on every row, rows sharing it
      are one question for the bootstrap (several samples per question).

    Each ground truth must be a valid answer for ``--task`` (a letter A-D for arith/science, a
    non-empty list of calls for tooluse, whose ``Action_Input`` may be a JSON string or a JSON
    object). The file must be UTF-8 without a byte-order mark. A row lacking either field, a
    ground truth the task cannot take, a byte that is not UTF-8 or a BOM is an error naming the
    file and its line (JSONL) or index (JSON list); the exit status is then 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["PredictionsError", "add_evaluate", "load_predictions"]

RESPONSE_KEYS = ("response", "output", "completion", "generated_text")
TRUTH_KEYS = ("ground_truth", "answer", "golden_answer", "label")
GROUP_KEYS = ("prompt_id", "question_id")


class PredictionsError(ValueError):
    """A predictions file cannot be read (names the file and the line or row)."""


def _truth_to_str(value: Any, where: str) -> str:
    """Canonical ground-truth string from a row's truth value (see the module docstring)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Answer" in value:
        return str(value["Answer"]).strip()
    if isinstance(value, list):
        if not value:
            raise PredictionsError(f"{where}: the ground truth is an empty list")
        first = value[0]
        if isinstance(first, dict) and "Answer" in first:
            return str(first["Answer"]).strip()
        return json.dumps(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise PredictionsError(
        f"{where}: cannot use a ground truth of type {type(value).__name__}: {value!r}"
    )


def _decode(path: Path, data: bytes) -> str:
    """``data`` as UTF-8 text; PredictionsError naming the line of a BOM or a non-UTF-8 byte."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise PredictionsError(
            f"{path} line 1: starts with a UTF-8 byte-order mark (BOM); save the file as UTF-8 "
            "without a BOM"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise PredictionsError(
            f"{path} line {line}: byte 0x{data[err.start]:02x} at column {column} is not UTF-8 "
            f"({err.reason}); the predictions file must be UTF-8"
        ) from None


def _read_rows(path: Path) -> list[tuple[str, Any]]:
    """``(where, row)`` pairs from a JSONL file or a JSON list; ``where`` names line or index."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PredictionsError(f"cannot read predictions {path}: {err}") from err
    text = _decode(path, data)
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise PredictionsError(f"{path} line {err.lineno}: not valid JSON: {err}") from err
        return [(f"{path} row {i}", row) for i, row in enumerate(rows)]
    out: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            out.append((where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise PredictionsError(f"{where}: not valid JSON: {err}") from err
    return out


def _task_truth(task: Any, value: Any, where: str) -> str:
    """``value`` as the task's canonical ground truth; PredictionsError naming ``where``."""
    try:
        return task.ground_truth(value)
    except ValueError as err:
        raise PredictionsError(
            f"{where}: the ground truth is not a valid answer for task {task.name!r}: {err}"
        ) from None


def load_predictions(
    path: str | os.PathLike[str], task: str | None = None
) -> tuple[list[str], list[str], list[Any] | None]:
    """Read a predictions file.

    Args:
        path: the JSONL file or JSON list (module docstring).
        task: a registered task name: every ground truth is checked and made canonical with
            its ``ground_truth`` (a tool-use ``Action_Input`` object becomes normalised JSON
            text). Without it, the ground truths are only turned into strings.

    Returns:
        ``(responses, ground_truths, groups)``: ``n`` response strings, ``n`` canonical
        ground-truth strings, and the per-row question ids when every row has a
        ``prompt_id``/``question_id`` (else ``None``).

    Raises:
        PredictionsError: unreadable file, a BOM or a byte that is not UTF-8, invalid JSON, a row
            that is not an object, lacks a response or ground truth, has one of the wrong type
            or a ground truth the task cannot take; no rows at all. Each names file and line.
    """
    path = Path(path)
    if task is not None:
        from caopd.tasks import get_task

        task_obj = get_task(task)
    responses: list[str] = []
    truths: list[str] = []
    groups: list[Any] = []
    for where, row in _read_rows(path):
        if not isinstance(row, dict):
            raise PredictionsError(f"{where}: expected a JSON object, got {type(row).__name__}")
        response_key = next((k for k in RESPONSE_KEYS if k in row), None)
        truth_key = next((k for k in TRUTH_KEYS if k in row), None)
        if response_key is None or truth_key is None:
            lacking = "a response" if response_key is None else "a ground truth"
            wanted = RESPONSE_KEYS if response_key is None else TRUTH_KEYS
            raise PredictionsError(
                f"{where}: no {lacking} (one of {list(wanted)}); keys found: {sorted(row)}"
            )
        response = row[response_key]
        if not isinstance(response, str):
            raise PredictionsError(
                f"{where}: {response_key!r} must be a string, got {type(response).__name__}"
            )
        responses.append(response)
        if task is None:
            truths.append(_truth_to_str(row[truth_key], where))
        else:
            truths.append(_task_truth(task_obj, row[truth_key], where))
        group_key = next((k for k in GROUP_KEYS if k in row), None)
        groups.append(None if group_key is None else json.dumps(row[group_key], sort_keys=True))
    if not responses:
        raise PredictionsError(f"{path}: no rows")
    has_groups = all(g is not None for g in groups)
    return responses, truths, (groups if has_groups else None)




def _task_names() -> list[str]:
    from caopd.tasks import TASKS

    return sorted(TASKS)


def _run_evaluate(args: argparse.Namespace) -> int:
    from caopd.evaluation.summary import score_rows, summarize
    from caopd.store import write_text

    try:
        responses, truths, groups = load_predictions(args.predictions, task=args.task)
    except PredictionsError as err:
        print(f"caopd evaluate: error: {err}", file=sys.stderr)
        return 2
    scored = score_rows(responses, truths, args.task)
    metrics = summarize(
        scored, n_bins=args.n_bins, n_resamples=args.bootstrap, seed=args.seed, groups=groups
    )
    body = {"task": args.task, "predictions": str(args.predictions), **metrics}
    text = json.dumps(body, indent=2)
    print(text)
    if args.out is not None:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, text + "\n")
    return 0


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a predictions file and print calibration metrics as JSON",
        description=(
            "Verify each response with the task's verifier, parse its confidence and print "
            "accuracy, ECE, Brier, SPR, AUROC, ... with bootstrap 95% intervals. Rows: "
            f"response in one of {list(RESPONSE_KEYS)}, ground truth in one of "
            f"{list(TRUTH_KEYS)}."
        ),
    )
    parser.add_argument("predictions", type=Path, help="JSONL file or JSON list of rows")
    parser.add_argument(
        "--task", required=True, choices=_task_names(), help="task whose verifier to use"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics JSON here")
    parser.add_argument("--n-bins", type=_positive_int, default=10, help="ECE bins (default 10)")
    parser.add_argument(
        "--bootstrap", type=_non_negative_int, default=1000,
        help="bootstrap resamples for the 95%% intervals; 0 skips them (default 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.set_defaults(handler=_run_evaluate)
