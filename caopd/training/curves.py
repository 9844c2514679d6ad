"""Training curves of the distill stage: one row per optimizer step, ``curves.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Float columns of a curve row, after ``step`` and ``round`` (int64).
CURVE_FLOATS = (
    "lr",
    "loss",
    "divergence",
    "entropy",
    "mean_p_acc",
    "format_adherence",
    "grad_norm",
)

#: Float columns written after :data:`CURVE_FLOATS` only when the rows hold them (the online
#: length curriculum's, :mod:`caopd.training.curriculum`), so the default file is unchanged.
OPTIONAL_CURVE_FLOATS = ("curriculum_length", "curriculum_entropy")


def write_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    """The curve rows as parquet (fixed column order and types)."""
    import pyarrow as pa

    from caopd.parquet import write_table

    optional = [name for name in OPTIONAL_CURVE_FLOATS if rows and name in rows[0]]
    schema = pa.schema(
        [("step", pa.int64()), ("round", pa.int64())]
        + [(name, pa.float64()) for name in (*CURVE_FLOATS, *optional)]
    )
    write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="snappy")


def read_curves(path: Path) -> list[dict[str, Any]]:
    """The curve rows of a ``curves.parquet`` (``step`` and ``round`` as int, the rest float)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
