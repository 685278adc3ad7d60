"""Reading a checkpoint file without running its code: safetensors, or a pickle through
``torch.load(weights_only=True)``. PyTorch side only; never import TensorFlow here."""

from __future__ import annotations

import pickle
from collections.abc import Mapping as MappingABC
from pathlib import Path

import torch

from vit_porting.mapping.tensor_io import CheckpointError
from vit_porting.safety import first_line

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "model_ema", "module")
# torch's own lines around a weights-only refusal: its advice to retry with weights_only=False
# would run the very code just refused
_TORCH_REFUSAL_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    # Training checkpoints nest the weights ({'model': ...}, {'state_dict': ...}); take the
    # first level that is a flat dict of tensors.
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in obj.items()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    found = f"top-level keys: {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise CheckpointError(
        f"{path}: no state_dict found (expected a dict of tensors, possibly under one of "
        f"{', '.join(WRAPPER_KEYS)}); found {found}")


def _refusal_detail(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only reader stopped at ("unsupported GLOBAL posix.system"), without
    torch's advice around it."""
    lines = (line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(exc).splitlines())
    return next((line for line in lines if line and not line.startswith(_TORCH_REFUSAL_BOILERPLATE)
                 and "weights_only" not in line), "not a pickle of tensors")


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without running any code it may carry.

    safetensors is preferred (no code path at all); pickles go through
    ``torch.load(weights_only=True)``, whose restricted unpickler refuses ``__reduce__`` payloads.
    Any failure is a one-line CheckpointError naming the file: the readers are parsers of
    untrusted bytes, whose exception types are no contract.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; "
                              f"use .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); it may be truncated: download it again")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc)}); "
                                  "it may be truncated or corrupt: download it again") from None
        return _unwrap(state, path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the pickle holds something other than tensors (possibly code) or is damaged, "
            f"and it was not executed ({_refusal_detail(exc)}). Get a .safetensors version of this "
            f"checkpoint, or re-save it from trusted code.") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)}); "
                              "it may be truncated or corrupt") from None
    return _unwrap(obj, path)


class _TorchSafetensors(MappingABC):
    """A safetensors file as ``{key: torch.Tensor}``, each tensor read when asked for (no memory
    map, so reading every tensor once does not leave the whole file in the resident set)."""

    def __init__(self, reader):
        self._reader = reader

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self._reader[key])

    def __iter__(self):
        return iter(self._reader)

    def __len__(self) -> int:
        return len(self._reader)


def open_checkpoint(path: str | Path) -> MappingABC[str, torch.Tensor]:
    """Like ``load_checkpoint``, but a ``.safetensors`` file whose dtypes numpy holds is read a
    tensor at a time (``vit_porting/mapping/tensor_io.py``): for the toolkit's own 1.4 GB intermediates."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from vit_porting.mapping.tensor_io import SafetensorsReader

        try:
            reader = SafetensorsReader(path)
            for key in reader:
                reader.dtype(key)
            return _TorchSafetensors(reader)
        except CheckpointError:
            pass  # bfloat16 or a damaged file: load_checkpoint reads it or says what is wrong
    return load_checkpoint(path)


def choose_checkpoint_file(path: Path) -> tuple[Path, str | None]:
    """safetensors over pickle whenever both are there: a folder's ``*.safetensors``, or the
    ``.safetensors`` twin of a ``.pth``/``.bin`` file. Returns the file and a note if it switched."""
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) or sorted(
            p for suffix in PICKLE_SUFFIXES for p in path.glob(f"*{suffix}"))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "no checkpoint files"
            raise CheckpointError(f"{path}: a folder must hold exactly one checkpoint to choose from "
                                  f"(found {found}); pass the file itself")
        return candidates[0], f"chose {candidates[0].name} in {path}"
    twin = path.with_suffix(".safetensors")
    if path.suffix in PICKLE_SUFFIXES and twin.is_file():
        return twin, f"{twin.name} used instead of {path.name}: safetensors cannot carry code"
    return path, None
