"""The engine's state as data: a JSON tree and numeric arrays, never code (checkpoints, warm starts).

:func:`dumps` walks an :class:`~opendt.engine.Engine` and writes every attribute as one of: a JSON value
(None, bool, int, float, str), a list/tuple/set/deque/dict of those, a numeric numpy array (stored once, raw,
after the tree), the topology document (read back through :func:`~opendt.models.topology.parse_topology`), or
another object of the engine's own state classes (:data:`_CLASSES`; an object met twice — the scheduler's host
table is the engine's — is stored once and referenced). Anything else is refused when the state is written.

:func:`loads` reads it back with no code from the data: the tree is JSON, the arrays are read with a numeric
dtype only (``bool``, ints, floats), and the only objects made are instances of :data:`_CLASSES`, created
without calling anything of theirs and given the stored attributes. A file of another format version, a cut
or damaged one (sizes and a CRC-32 of the content are checked) or one that does not describe an engine raises
:class:`StateError`, with what is wrong.

Layout: ``ODTE2``, the content's size (8 bytes, little-endian), its CRC-32 (4 bytes), then the
zstd-compressed content: ``ODTR2``, the JSON header's size (4 bytes), the header (``{"version", "tree",
"arrays"}``), then each array's bytes, at the offsets the header gives.
"""

from __future__ import annotations

import collections
import json
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from opendt.engine import Engine

VERSION = 1
"""The format version (a state of another version is refused, never guessed at)."""
MAGIC = b"ODTE2"
RAW_MAGIC = b"ODTR2"
MAX_RAW = 1 << 34
"""Largest content read back (16 GiB: bounds the allocation a forged size could ask for)."""
_ZSTD = pa.Codec("zstd", compression_level=3)
_ARRAY_KINDS = "biuf"
_LIST_MIN = 16
"""Lists at least this long of only ints, floats or bools are stored as arrays."""


class StateError(ValueError):
    """A stored engine state that cannot be read back (what is wrong is the message)."""


def _classes() -> dict[str, type]:
    from opendt.engine.carbon import CarbonTrace
    from opendt.engine.engine import Engine
    from opendt.engine.hosts import HostTable
    from opendt.engine.placement import Scheduler
    from opendt.engine.power import Model, PowerParams
    from opendt.engine.rows import ExportGrid
    from opendt.engine.segments import FragmentStore, SegmentSet

    kinds: list[type] = [Engine, HostTable, PowerParams, Model, CarbonTrace, Scheduler, FragmentStore]
    kinds += [SegmentSet, ExportGrid]
    return {c.__name__: c for c in kinds}


class _Writer:
    def __init__(self) -> None:
        self.classes = {c: n for n, c in _classes().items()}
        self.arrays: list[np.ndarray[Any, Any]] = []
        self.memo: dict[int, int] = {}
        self.alive: list[object] = []  # the memo's ids stay valid while the walk lasts

    def array(self, a: np.ndarray[Any, Any]) -> int:
        if a.dtype.kind not in _ARRAY_KINDS:
            raise StateError(f"engine state: array of dtype {a.dtype} is not numeric")
        self.arrays.append(np.ascontiguousarray(a))
        return len(self.arrays) - 1

    def enc(self, o: Any) -> Any:
        t = type(o)
        if o is None or t in (bool, str, int, float):
            return o
        if t is list:
            if len(o) >= _LIST_MIN:
                packed = self._list(o)
                if packed is not None:
                    return packed
            return [self.enc(x) for x in o]
        if isinstance(o, np.ndarray):
            return {"$a": self.array(o)}
        if isinstance(o, np.generic):
            if o.dtype.kind not in _ARRAY_KINDS:
                raise StateError(f"engine state: scalar of dtype {o.dtype} is not numeric")
            return {"$n": [o.dtype.str, o.item()]}
        if t is tuple:
            return {"$t": [self.enc(x) for x in o]}
        if t is set:
            return {"$s": [self.enc(x) for x in sorted(o, key=repr)]}
        if t is collections.deque:
            return {"$q": [self.enc(x) for x in o], "m": o.maxlen}
        if t is dict:
            if all(type(k) is str for k in o):
                return {"$ds": {k: self.enc(v) for k, v in o.items()}}
            return {"$d": [[self.enc(k), self.enc(v)] for k, v in o.items()]}
        from opendt.models.topology import Topology

        if t is Topology:
            return {"$topo": o.to_json_dict()}
        name = self.classes.get(t)
        if name is None:
            raise StateError(f"engine state: cannot store a {t.__module__}.{t.__qualname__}")
        ref = self.memo.get(id(o))
        if ref is not None:
            return {"$r": ref}
        self.memo[id(o)] = len(self.memo)
        self.alive.append(o)
        node: dict[str, Any] = {"$o": name, "i": self.memo[id(o)]}
        if hasattr(t, "_fields"):  # a NamedTuple
            node["v"] = [self.enc(x) for x in o]
        else:  # its attributes, less what the class leaves out of copies (its own __getstate__: an index)
            own = "__getstate__" in vars(t)
            node["f"] = {k: self.enc(v) for k, v in (o.__getstate__() if own else vars(o)).items()}
        return node

    def _list(self, o: list[Any]) -> dict[str, int] | None:
        kind = type(o[0])
        if kind not in (int, float, bool) or any(type(x) is not kind for x in o):
            return None
        if kind is int:
            try:
                return {"$li": self.array(np.array(o, dtype=np.int64))}
            except OverflowError:
                return None
        dtype = np.float64 if kind is float else np.bool_
        return {"$lf" if kind is float else "$lb": self.array(np.array(o, dtype=dtype))}


def dumps(engine: Engine) -> bytes:
    """The engine's state (:func:`loads` reads it back)."""
    w = _Writer()
    tree = w.enc(engine)
    specs, offset = [], 0
    for a in w.arrays:
        specs.append([a.dtype.str, list(a.shape), offset, a.nbytes])
        offset += -(-a.nbytes // 8) * 8
    header = json.dumps({"version": VERSION, "tree": tree, "arrays": specs}, separators=(",", ":")).encode()
    head = RAW_MAGIC + len(header).to_bytes(4, "little") + header
    start = -(-len(head) // 8) * 8
    raw = bytearray(start + offset)
    raw[: len(head)] = head
    for a, spec in zip(w.arrays, specs, strict=True):
        raw[start + spec[2] : start + spec[2] + a.nbytes] = a.tobytes()
    packed: bytes = _ZSTD.compress(bytes(raw), asbytes=True)
    return MAGIC + len(raw).to_bytes(8, "little") + zlib.crc32(raw).to_bytes(4, "little") + packed


def unpack(blob: bytes) -> bytes:
    """The checked, decompressed content of a :func:`dumps` (content is returned as it is)."""
    if blob.startswith(RAW_MAGIC):
        return blob
    if not blob.startswith(MAGIC):
        what = (
            "an older pickled snapshot, no longer read"
            if blob[:5] in (b"ODTZ1",) or blob[:1] == b"\x80"
            else ""
        )
        raise StateError(f"not an OpenDT engine state{f' ({what})' if what else ''}")
    head = len(MAGIC)
    if len(blob) < head + 12:
        raise StateError(f"engine state cut short ({len(blob)} bytes)")
    size = int.from_bytes(blob[head : head + 8], "little")
    crc = int.from_bytes(blob[head + 8 : head + 12], "little")
    if size > MAX_RAW:
        raise StateError(f"engine state claims {size} bytes, more than the {MAX_RAW} read back")
    try:
        raw: bytes = _ZSTD.decompress(blob[head + 12 :], decompressed_size=size, asbytes=True)
    except (OSError, pa.ArrowException) as e:
        raise StateError(f"engine state damaged or cut short ({len(blob)} bytes): {e}") from None
    if len(raw) != size or zlib.crc32(raw) != crc:
        raise StateError(f"engine state damaged or cut short ({len(blob)} bytes): checksum mismatch")
    return raw


def loads(blob: bytes) -> Engine:
    """The engine of a :func:`dumps` (or of its :func:`unpack`); :class:`StateError` when it cannot be."""
    from opendt.engine.engine import Engine

    raw = unpack(blob)
    try:
        n = int.from_bytes(raw[5:9], "little")
        doc = json.loads(raw[9 : 9 + n])
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            got = doc.get("version") if isinstance(doc, dict) else None
            raise StateError(f"engine state of format version {got!r}, this OpenDT reads version {VERSION}")
        engine = _Reader(raw, -(-(9 + n) // 8) * 8, doc["arrays"]).dec(doc["tree"])
    except StateError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as e:
        raise StateError(f"engine state malformed: {type(e).__name__}: {str(e)[:200]}") from None
    if type(engine) is not Engine:
        raise StateError("engine state does not hold an engine")
    return engine


class _Reader:
    def __init__(self, raw: bytes, start: int, specs: list[Any]) -> None:
        self.raw, self.start, self.specs = raw, start, specs
        self.classes = _classes()
        self.memo: list[object] = []

    def array(self, i: Any) -> np.ndarray[Any, Any]:
        if type(i) is not int or not 0 <= i < len(self.specs):
            raise StateError(f"engine state: no array {i!r}")
        dt, shape, offset, nbytes = self.specs[i]
        dtype = np.dtype(str(dt))
        if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
            raise StateError(f"engine state: array dtype {dt!r} is not numeric")
        if not all(type(s) is int and s >= 0 for s in shape) or type(offset) is not int or offset < 0:
            raise StateError(f"engine state: array {i} has a bad shape or offset")
        lo = self.start + offset
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes or lo + nbytes > len(self.raw):
            raise StateError(f"engine state: array {i} does not fit its bytes")
        return (
            np.frombuffer(self.raw, dtype=dtype, count=nbytes // dtype.itemsize, offset=lo)
            .reshape(shape)
            .copy()
        )

    def dec(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.dec(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "$a" in node:
            return self.array(node["$a"])
        if "$li" in node or "$lf" in node or "$lb" in node:
            a = self.array(node.get("$li", node.get("$lf", node.get("$lb"))))
            want = "i" if "$li" in node else "f" if "$lf" in node else "b"
            if a.dtype.kind != want or a.ndim != 1:
                raise StateError("engine state: a packed list of the wrong kind")
            return a.tolist()
        if "$n" in node:
            dt, value = node["$n"]
            dtype = np.dtype(str(dt))
            if dtype.kind not in _ARRAY_KINDS:
                raise StateError(f"engine state: scalar dtype {dt!r} is not numeric")
            return dtype.type(value)
        if "$t" in node:
            return tuple(self.dec(x) for x in node["$t"])
        if "$s" in node:
            return {self.dec(x) for x in node["$s"]}
        if "$q" in node:
            return collections.deque((self.dec(x) for x in node["$q"]), maxlen=node.get("m"))
        if "$ds" in node:
            return {str(k): self.dec(v) for k, v in node["$ds"].items()}
        if "$d" in node:
            return {self.dec(k): self.dec(v) for k, v in node["$d"]}
        if "$topo" in node:
            from opendt.models.topology import parse_topology

            return parse_topology(node["$topo"], source="engine state")
        if "$r" in node:
            ref = node["$r"]
            if type(ref) is not int or not 0 <= ref < len(self.memo):
                raise StateError(f"engine state: reference {ref!r} to nothing")
            return self.memo[ref]
        if "$o" in node:
            return self.obj(node)
        raise StateError(f"engine state: unknown node {sorted(node)[:3]}")

    def obj(self, node: dict[str, Any]) -> object:
        cls = self.classes.get(str(node["$o"]))
        if cls is None or node.get("i") != len(self.memo):
            raise StateError(f"engine state: unexpected object {str(node['$o'])[:40]!r}")
        if hasattr(cls, "_fields"):  # a NamedTuple: its fields, in order
            values = node["v"]
            if not isinstance(values, list) or len(values) != len(cls._fields):
                raise StateError(f"engine state: {cls.__name__} with {len(values)} fields")
            self.memo.append(None)
            made: object = cls(*(self.dec(v) for v in values))
            self.memo[-1] = made
            return made
        fields = node["f"]
        if not isinstance(fields, dict) or not all(
            k.isidentifier() and not k.startswith("__") for k in fields
        ):
            raise StateError(f"engine state: bad attributes of {cls.__name__}")
        declared = getattr(cls, "__dataclass_fields__", None)
        if declared is not None and set(fields) != set(declared):
            raise StateError(f"engine state: {cls.__name__} attributes differ from this OpenDT's")
        made = object.__new__(cls)
        self.memo.append(made)
        values = {k: self.dec(v) for k, v in fields.items()}
        if "__setstate__" in vars(cls):  # one of our classes rebuilds what it leaves out (an index)
            made.__setstate__(values)
        else:
            for k, v in values.items():
                object.__setattr__(made, k, v)
        return made
