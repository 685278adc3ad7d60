"""Property check of the weight readers, run in its own process (it imports torch; the pytest
process must not): ``python tests/fuzz_readers.py WORK_DIR MAX_EXAMPLES``.

Random bytes, random truncations, bit flips and splices of valid files go to
``vit_porting.weights.checkpoint.load_checkpoint`` / ``open_checkpoint`` (every tensor read) and to
``vit_porting.mapping.tensor_io.SafetensorsReader``; every failure must be ``CheckpointError`` with a
one-line message. Hypothesis shrinks and prints a counterexample, and the process exits
non-zero, when one is not.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vit_porting.mapping.tensor_io import SafetensorsReader, write_safetensors
from vit_porting.weights.checkpoint import CheckpointError, load_checkpoint, open_checkpoint

warnings.simplefilter("ignore")  # torch warns about every odd pickle it reads
WORK = Path(sys.argv[1])
EXAMPLES = int(sys.argv[2])
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _valid_files() -> dict[str, bytes]:
    """One small valid file of each kind: safetensors, zip .pth, legacy .pth (a wrapped state_dict)."""
    rng = np.random.default_rng(0)
    state = {"blocks.0.attn.qkv.weight": rng.standard_normal((6, 2)).astype(np.float32),
             "blocks.0.attn.qkv.bias": rng.standard_normal(6).astype(np.float32),
             "head.weight": rng.standard_normal((3, 2)).astype(np.float16),
             "steps": np.array([7], np.int64)}
    write_safetensors(state, WORK / "valid.safetensors", metadata={"format": "pt"})
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    torch.save({"model": tensors, "epoch": 3}, WORK / "valid.pth")
    torch.save(tensors, WORK / "legacy.pth", _use_new_zipfile_serialization=False)
    return {name: (WORK / name).read_bytes() for name in ("valid.safetensors", "valid.pth", "legacy.pth")}


VALID = _valid_files()


def _damaged(data: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes): random bytes, or a valid file truncated, bit-flipped or spliced."""
    name = data(st.sampled_from(sorted(VALID)))
    original = VALID[name]
    suffix = Path(name).suffix
    how = data(st.sampled_from(["random", "truncate", "flip", "splice"]))
    if how == "random":
        return suffix, data(st.binary(max_size=2048))
    if how == "truncate":
        return suffix, original[:data(st.integers(0, len(original) - 1))]
    if how == "flip":
        raw = bytearray(original)
        for position in data(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8)):
            raw[position] ^= 1 << data(st.integers(0, 7))
        return suffix, bytes(raw)
    start = data(st.integers(0, len(original)))
    end = data(st.integers(start, len(original)))
    return suffix, original[:start] + data(st.binary(max_size=64)) + original[end:]


def _read_everything(mapping) -> None:
    for key in mapping:
        _ = mapping[key]  # a lazy mapping reads the tensor from disk here


def _check(path: Path, read) -> None:
    try:
        read(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc), f"a message of more than one line: {exc!r}"
        assert str(path) in str(exc), f"the message does not name the file: {exc!r}"


_count = {"cases": 0}


@SETTINGS
@given(st.data())
def test_readers(data: st.DataObject) -> None:
    suffix, raw = _damaged(data.draw)
    _count["cases"] += 1
    path = WORK / f"case{suffix}"
    path.write_bytes(raw)
    _check(path, lambda p: _read_everything(load_checkpoint(p)))
    _check(path, lambda p: _read_everything(open_checkpoint(p)))
    if suffix == ".safetensors":
        _check(path, lambda p: _read_everything(SafetensorsReader(p)))


if __name__ == "__main__":
    test_readers()
    print(f"ok: {_count['cases']} damaged files, every failure a one-line CheckpointError")
