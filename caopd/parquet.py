"""The one Parquet writer of the pipeline, and the frame reader that goes with it.

Every Parquet file an artifact holds is written by :func:`write_table`: fixed settings (one row
group, dictionary encoding, column statistics, no pandas index), written to a temporary file and
renamed into place, so its bytes depend only on the values and a killed job leaves no half file.
The tables come from :func:`table_from_columns` (a fixed Arrow schema: rollouts, targets,
examples, curves, expected confidences) or :func:`table_from_pandas` (a frame whose columns are
the schema: the scored answers of the evaluate stage).

Codec: ``zstd`` by default; the files first written with pyarrow's default codec (``snappy``:
``curves.parquet``, ``expected_confidence.parquet``, ``scored.parquet``) keep it, so that an
artifact built before this module existed has the same bytes when rebuilt.

pyarrow and pandas are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    import pyarrow as pa

Codec = Literal["zstd", "snappy"]


def table_from_columns(columns: Mapping[str, Sequence[Any]], schema: pa.Schema) -> pa.Table:
    """``columns`` (name -> values in row order) as a table of ``schema`` (its column order)."""
    import pyarrow as pa

    return pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)


def table_from_pandas(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as a table, its columns and dtypes as they are, without the index (what
    ``DataFrame.to_parquet(index=False)`` writes, pandas metadata included)."""
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def write_table(table: pa.Table, path: str | Path, *, compression: Codec = "zstd") -> Path:
    """Write ``table`` to ``path`` atomically (temporary file + rename); returns ``path``.

    One row group, dictionary encoding and statistics on: equal tables give equal bytes.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(
            table,
            tmp,
            compression=compression,
            row_group_size=max(table.num_rows, 1),
            use_dictionary=True,
            write_statistics=True,
        )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def frame_cell(value: Any) -> Any:
    """A DataFrame cell as a plain Python value for Arrow: NaN / NA / None -> None."""
    import pandas as pd

    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None or pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def write_frame(frame: pd.DataFrame, schema: pa.Schema, path: str | Path) -> Path:
    """Write the ``schema`` columns of ``frame`` (no index; NaN / NA stored as null)."""
    columns = {f.name: [frame_cell(v) for v in frame[f.name].tolist()] for f in schema}
    return write_table(table_from_columns(columns, schema), path)


def read_frame(path: str | Path) -> pd.DataFrame:
    """A Parquet file written by :func:`write_frame` as a DataFrame.

    Nulls come back as NaN in float columns, as None in string columns (object dtype), and as
    ``pandas.NA`` in integer columns (which then have the nullable ``Int64`` dtype).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    frame = table.to_pandas()
    for field in table.schema:
        if not table.column(field.name).null_count:
            continue
        if pa.types.is_integer(field.type):
            frame[field.name] = frame[field.name].astype("Int64")
        elif pa.types.is_string(field.type):
            frame[field.name] = pd.Series(table.column(field.name).to_pylist(), dtype=object)
    return frame
