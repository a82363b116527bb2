"""Output tables as typed numpy columns, turned into Arrow (parquet files) or polars (the library API).

The engine computes every output column as a numpy array. A :class:`Table` names the columns and their OpenDC
type, so the CLI writes parquet straight from Arrow without importing polars, while ``simulate`` and
``Engine.advance`` still hand out polars frames. String columns are kept as codes into a short list of labels
(host and cluster names, task states): Arrow writes them as dictionary-encoded strings without building a
million Python strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

Kind = Literal["i64", "i32", "f64", "f32", "str"]
_NUMPY: dict[str, type[np.generic]] = {
    "i64": np.int64,
    "i32": np.int32,
    "f64": np.float64,
    "f32": np.float32,
}


@dataclass(frozen=True)
class Col:
    """A column: ``values`` (for ``str``: int codes into ``labels``), optional validity (False = null)."""

    kind: Kind
    values: npt.NDArray[Any]
    labels: tuple[str, ...] = ()
    valid: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return int(self.values.size)


def num(kind: Kind, values: npt.ArrayLike, valid: npt.NDArray[np.bool_] | None = None) -> Col:
    """A numeric column (``values`` are converted to the kind's dtype when it is built)."""
    return Col(kind, np.asarray(values), valid=valid)


def const(kind: Kind, value: float, n: int) -> Col:
    """A column repeating ``value`` (a read-only view: no memory until it is written out)."""
    return Col(kind, np.broadcast_to(np.array(value, dtype=_NUMPY[kind]), (n,)))


def nulls(kind: Kind, n: int) -> Col:
    """An all-null column."""
    zero = np.broadcast_to(np.zeros((), dtype=_NUMPY[kind]), (n,))
    return Col(kind, zero, valid=np.broadcast_to(np.zeros((), dtype=np.bool_), (n,)))


def rows(table: Table, lo: int, hi: int) -> Table:
    """Rows ``lo … hi − 1`` of ``table`` (views)."""
    return {
        k: Col(c.kind, c.values[lo:hi], c.labels, None if c.valid is None else c.valid[lo:hi])
        for k, c in table.items()
    }


def text(labels: list[str] | tuple[str, ...], codes: npt.ArrayLike) -> Col:
    """A string column: row ``i`` is ``labels[codes[i]]``."""
    return Col("str", np.asarray(codes, dtype=np.int32), labels=tuple(labels))


Table = dict[str, Col]


def height(table: Table) -> int:
    """Number of rows (0 for a table without columns)."""
    return len(next(iter(table.values()))) if table else 0


def _typed(c: Col) -> npt.NDArray[Any]:
    return c.values.astype(_NUMPY[c.kind], copy=False)


def _arrow_numbers(kind: Kind, values: npt.NDArray[Any], valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    """A zero-copy Arrow array over ``values`` (``pa.array`` would import ``numpy.ma`` on first use)."""
    import pyarrow as pa

    data = np.ascontiguousarray(values.astype(_NUMPY[kind], copy=False))
    bitmap = None
    nulls = 0
    if valid is not None:
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        nulls = int(valid.size - np.count_nonzero(valid))
    arrow_type = {"i64": pa.int64(), "i32": pa.int32(), "f64": pa.float64(), "f32": pa.float32()}[kind]
    return pa.Array.from_buffers(arrow_type, data.size, [bitmap, pa.py_buffer(data)], null_count=nulls)


def to_arrow(table: Table, *, nullable: frozenset[str] | None = None) -> pa.Table:
    """An Arrow table; fields are non-null except the columns in ``nullable`` (default: those with nulls).

    String columns become dictionary arrays; written with ``store_schema=False`` they are plain strings.
    """
    import pyarrow as pa

    arrays = []
    fields = []
    for name, c in table.items():
        if c.kind == "str":
            arr: pa.Array = pa.DictionaryArray.from_arrays(
                _arrow_numbers("i32", c.values, None), pa.array(c.labels, pa.string())
            )
        else:
            arr = _arrow_numbers(c.kind, c.values, c.valid)
        is_nullable = (c.valid is not None) if nullable is None else name in nullable
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, nullable=is_nullable))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


_POLARS = {"i64": "Int64", "i32": "Int32", "f64": "Float64", "f32": "Float32"}


def to_polars(table: Table) -> pl.DataFrame:
    """A polars frame with the same columns and types (strings as ``String``)."""
    import polars as pl

    cols = []
    for name, c in table.items():
        if c.kind == "str":
            s = pl.Series(name, list(c.labels), dtype=pl.String).gather(c.values)
        else:
            s = pl.Series(name, _typed(c), dtype=getattr(pl, _POLARS[c.kind]))
        if c.valid is not None:
            s = pl.select(pl.when(pl.lit(pl.Series(c.valid))).then(s).alias(name)).to_series()
        cols.append(s)
    return pl.DataFrame(cols)
