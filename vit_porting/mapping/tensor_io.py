"""safetensors files read one tensor at a time and written as a stream, in numpy.

The safetensors libraries read a file by memory-mapping it (every page touched stays in the
process's resident set while the map lives) and write one by first turning every tensor into
``bytes`` (a second copy of the whole model). For cait_m48_448 (1.4 GB) either doubles the
memory of a port step. The format is simple (8-byte header length, JSON header, raw
little-endian data), so here a tensor is read with ``pread`` when it is asked for, and a file is
written tensor by tensor from arrays that are produced only when their turn comes
(``LazyArray``). Files written here load with ``safetensors`` (tests check both ways).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from vit_porting.safety import first_line

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
CODES = {np.dtype(v): k for k, v in DTYPES.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do, on one line.

    Defined here, free of torch, so that both sides of a port raise it (``vit_porting.weights.sources``
    re-exports it for the PyTorch side)."""


class UnsupportedDtype(CheckpointError):
    """A tensor numpy cannot hold (bfloat16, float8): read that file with safetensors instead."""


class LazyArray:
    """An array known by shape and dtype, computed by ``read()`` only when ``np.asarray`` asks.

    ``np.shape`` reads ``.shape`` without computing, so the mapping engine plans a whole port on
    lazy arrays and materialises one tensor at a time.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, read: Callable[[], np.ndarray]):
        self.shape, self.dtype, self._read = tuple(shape), np.dtype(dtype), read

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self._read()
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


def _corrupt(path: Path | str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a safetensors file, or a truncated or corrupt one ({what})")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: Path | str) -> tuple[dict, dict[str, str], int]:
    """({name: {dtype, shape, data_offsets}}, metadata, offset of the data section).

    Every entry is checked against the file before any tensor is read: a damaged or hostile
    header must stop here (CheckpointError), not as a KeyError deep in a port or a huge
    allocation."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, "shorter than 8 bytes")
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise _corrupt(path, f"header length {length} past the end")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise _corrupt(path, f"header is not JSON: {first_line(exc)}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ is not a table of strings")
    data_size = size - 8 - length
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(entry.get("shape"), list) and all(_is_count(n) for n in entry["shape"])
                and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
                and all(_is_count(n) for n in entry["data_offsets"])):
            raise _corrupt(path, f"tensor {name!r} has no valid dtype, shape and data_offsets")
        begin, end = entry["data_offsets"]
        if begin > end or end > data_size:
            raise _corrupt(path, f"tensor {name!r} lies at bytes {begin}..{end} of a {data_size}-byte data section")
        code = entry["dtype"]
        if code in DTYPES and end - begin != math.prod(entry["shape"]) * np.dtype(DTYPES[code]).itemsize:
            raise _corrupt(path, f"tensor {name!r} has {end - begin} bytes for shape {entry['shape']} {code}")
    return header, metadata, 8 + length


class SafetensorsReader(Mapping):
    """``{name: np.ndarray}`` over a safetensors file; each tensor is read from disk when asked
    for (``pread``, no memory map), and ``lazy()`` gives ``LazyArray`` values for planning."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        self.header, self.metadata, self._data_start = read_header(self.path)
        self._size = os.path.getsize(self.path)

    def dtype(self, name: str) -> np.dtype:
        code = self.header[name]["dtype"]
        if code not in DTYPES:
            raise UnsupportedDtype(f"{self.path}: tensor {name} is {code}, which numpy cannot hold")
        return np.dtype(DTYPES[code]).newbyteorder("<")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self.header[name]
        dtype, shape = self.dtype(name), self.shape(name)
        begin, end = entry["data_offsets"]
        if end - begin != math.prod(shape) * dtype.itemsize or self._data_start + end > self._size:
            raise CheckpointError(f"{self.path}: tensor {name} has {end - begin} bytes on disk for shape "
                                  f"{list(shape)} {entry['dtype']} (truncated or corrupt file)")
        array = np.empty(shape, dtype=dtype)
        view = memoryview(array.reshape(-1)).cast("B")
        fd = os.open(self.path, os.O_RDONLY)
        try:
            done = 0
            while done < len(view):
                n = os.preadv(fd, [view[done:]], self._data_start + begin + done)
                if n <= 0:
                    raise CheckpointError(f"{self.path}: tensor {name} ends early (truncated or corrupt file)")
                done += n
        finally:
            os.close(fd)
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)

    def lazy(self) -> dict[str, LazyArray]:
        return {name: LazyArray(self.shape(name), self.dtype(name), lambda n=name: self[n]) for name in self.header}


def write_safetensors(tensors: Mapping[str, np.ndarray | LazyArray], path: Path | str,
                      metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` (arrays or ``LazyArray``), materialising one at a time; returns bytes written.

    Tensors are laid out in name order; the header is padded with spaces to 8 bytes, as the
    reference implementation does.
    """
    names = sorted(tensors)
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    for name in names:
        value = tensors[name]
        dtype = np.dtype(value.dtype)
        if dtype not in CODES:
            raise UnsupportedDtype(f"tensor {name}: dtype {dtype} cannot be written here")
        size = math.prod(value.shape) * dtype.itemsize
        header[name] = {"dtype": CODES[dtype], "shape": list(value.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for name in names:
            array = np.asarray(tensors[name], dtype=np.dtype(tensors[name].dtype))
            if not array.flags.c_contiguous:
                array = array.copy(order="C")
            if array.shape != tuple(header[name]["shape"]):
                raise ValueError(f"tensor {name}: produced shape {array.shape}, declared {header[name]['shape']}")
            handle.write(memoryview(array.reshape(-1)).cast("B"))
            del array
    return 8 + len(blob) + offset
