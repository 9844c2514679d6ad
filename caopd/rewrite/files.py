"""The rewrite's files: ``examples.parquet`` (its schema, writer and reader) and the decoded
``preview.jsonl`` rows (:mod:`caopd.artifacts` names both)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caopd.artifacts import EXAMPLE_COLUMNS, SAMPLED_LEN

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pyarrow as pa

PREVIEW_ROWS = 20


def _examples_schema(sampled_len: bool = False) -> pa.Schema:
    import pyarrow as pa

    optional = [pa.field(SAMPLED_LEN, pa.int32(), nullable=False)] if sampled_len else []
    return pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sample_index", pa.int32(), nullable=False),
            pa.field("student_input_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("student_prompt_len", pa.int32(), nullable=False),
            pa.field("teacher_input_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("teacher_prompt_len", pa.int32(), nullable=False),
            pa.field("completion_len", pa.int32(), nullable=False),
            pa.field("p_acc", pa.float64(), nullable=False),
            pa.field("stated_confidence", pa.float64()),
            pa.field("correct", pa.bool_(), nullable=False),
            pa.field("rewritten", pa.bool_(), nullable=False),
            *optional,
        ]
    )


def write_examples(rows: Sequence[Mapping[str, Any]], path: str | Path, *, sampled_len: bool = False) -> Path:
    """Write ``rows`` (from :func:`build_examples`) as Parquet, sorted by
    ``(prompt_id, sample_index)``; NaN ``stated_confidence`` is stored as null. ``sampled_len``:
    add that column (:data:`caopd.artifacts.SAMPLED_LEN`; the sampled-token estimators read it),
    else the file holds :data:`~caopd.artifacts.EXAMPLE_COLUMNS` only."""
    from caopd.parquet import table_from_columns, write_table

    ordered = sorted(rows, key=lambda row: (row["prompt_id"], row["sample_index"]))
    names = (*EXAMPLE_COLUMNS, SAMPLED_LEN) if sampled_len else EXAMPLE_COLUMNS
    columns = {name: [row[name] for row in ordered] for name in names}
    columns["stated_confidence"] = [
        None if value != value else value for value in columns["stated_confidence"]
    ]
    return write_table(table_from_columns(columns, _examples_schema(sampled_len)), path)


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """The rows of an ``examples.parquet`` (ids as ``list[int]``; null confidence as NaN)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if row["stated_confidence"] is None:
            row["stated_confidence"] = math.nan
    return rows


def preview_rows(
    rows: Sequence[Mapping[str, Any]], tokenizer: Any, n: int = PREVIEW_ROWS
) -> list[dict[str, Any]]:
    """The first ``n`` rows decoded for reading (special tokens shown)."""
    out = []
    for row in rows[:n]:
        student, teacher = row["student_input_ids"], row["teacher_input_ids"]
        s_len, t_len = row["student_prompt_len"], row["teacher_prompt_len"]
        out.append(
            {
                "prompt_id": row["prompt_id"],
                "sample_index": row["sample_index"],
                "p_acc": row["p_acc"],
                "correct": row["correct"],
                "rewritten": row["rewritten"],
                "student_prompt": tokenizer.decode(student[:s_len], skip_special_tokens=False),
                "completion": tokenizer.decode(student[s_len:], skip_special_tokens=False),
                "teacher_prompt": tokenizer.decode(teacher[:t_len], skip_special_tokens=False),
            }
        )
    return out
