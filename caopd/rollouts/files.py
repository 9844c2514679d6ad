"""The rollouts file: :class:`caopd.rollouts.engine.RolloutRecord` rows as Parquet.

The schema is fixed and versioned (:data:`ROLLOUTS_SCHEMA_VERSION`, in the schema metadata),
rows are sorted by ``(prompt_id, sample_index)`` and the file is written by
:func:`caopd.parquet.write_table`, so its bytes depend only on the records (two writes of the
same records are byte-identical) and the ``rollouts`` stage can be checked by sha256.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from caopd.rollouts.engine import RolloutRecord

#: Version of the rollouts file schema; stored in the Parquet schema metadata.
ROLLOUTS_SCHEMA_VERSION = "1"

_COLUMNS = (
    "prompt_id",
    "sample_index",
    "prompt_token_ids",
    "completion_token_ids",
    "text",
    "finish_reason",
    "seed",
)


def _schema():  # -> pyarrow.Schema
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("prompt_id", pa.string(), nullable=False),
            pa.field("sample_index", pa.int32(), nullable=False),
            pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("completion_token_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("finish_reason", pa.string(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
        ],
        metadata={"caopd.rollouts.schema_version": ROLLOUTS_SCHEMA_VERSION},
    )


def write_rollouts(records: Sequence[RolloutRecord], path: str | Path) -> Path:
    """Write ``records`` to a Parquet file at ``path`` (atomically: temp file + rename).

    Rows are sorted by ``(prompt_id, sample_index)``; schema, row-group size and zstd compression
    are fixed and no pandas metadata is stored, so the bytes depend only on the records.
    """
    from caopd.parquet import table_from_columns, write_table

    ordered = sorted(records, key=lambda r: (r.prompt_id, r.sample_index))
    keys = [(r.prompt_id, r.sample_index) for r in ordered]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate (prompt_id, sample_index) in rollout records")
    columns = {name: [getattr(r, name) for r in ordered] for name in _COLUMNS}
    return write_table(table_from_columns(columns, _schema()), path)


def read_rollouts(path: str | Path) -> list[RolloutRecord]:
    """Read a file written by :func:`write_rollouts` (rows in file order)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if tuple(table.column_names) != _COLUMNS:
        raise ValueError(f"{path}: not a rollouts file; columns {table.column_names}, expected {list(_COLUMNS)}")
    version = (table.schema.metadata or {}).get(b"caopd.rollouts.schema_version", b"?").decode()
    if version != ROLLOUTS_SCHEMA_VERSION:
        raise ValueError(f"{path}: rollouts schema version {version}, this code reads {ROLLOUTS_SCHEMA_VERSION}")
    return [RolloutRecord(**row) for row in table.to_pylist()]
