"""Runtime outputs on disk: one ``.npy`` per output, written a slice at a time, read one at a time.

At 448 px the 50 attention maps of one CaiT-M48 image are 1.9 GB, more than the model's
weights (1.4 GB). A runtime that returned every map of the parity batch at once, and a report
that loaded every runtime's maps together, made the port of that variant peak at 10x its
weight bytes. So:

- ``plan_calls`` splits a model's outputs into groups whose bytes stay under a budget, one
  image per call when the whole batch would not fit; a graph runtime asked for a subset of its
  outputs frees the rest as it goes (XLA, a tf.function, ONNX Runtime), and an eager Keras
  call drops each tensor after its last use (``vit_porting.mapping.convert.call_functional``);
- ``OutputStore`` writes each group's arrays straight into their ``.npy`` files (plain file
  writes at an offset: no memory map whose dirty pages would count against the process);
- ``read_outputs`` gives the report a mapping that memory-maps one output when it is asked for.

numpy only: every runtime process and the orchestrator use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

# What one runtime call may hold in outputs, unless the port says otherwise. Graph runtimes hold a
# group twice for a moment (the framework's tensors and their numpy copies), so the peak of a
# runtime process is about weights + runtime + 2x this.
DEFAULT_BUDGET_MB = 384
PHOTO_PREFIX = "photos:"
INDEX = "outputs.json"

RunFn = Callable[[np.ndarray, "list[str] | None"], Mapping[str, np.ndarray]]


def _file_name(name: str) -> str:
    return name.replace(":", "__") + ".npy"


class OutputStore:
    """Writes a runtime's outputs into ``folder``: ``<output>.npy`` each, plus ``outputs.json``
    (their names, in the order they were first written)."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._offsets: dict[str, int] = {}

    def write(self, name: str, array: np.ndarray, start: int = 0, total: int | None = None) -> None:
        """Rows ``start:start + len(array)`` of output ``name``, whose first axis has ``total``
        rows (``len(array)`` when not given); the file is created on the first write."""
        array = np.ascontiguousarray(array)
        total = len(array) if total is None else total
        path = self.folder / _file_name(name)
        shape = (total, *array.shape[1:])
        if name not in self._shapes:
            with open(path, "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                              "fortran_order": False, "shape": shape})
                self._offsets[name] = handle.tell()
                handle.truncate(self._offsets[name] + math.prod(shape) * array.dtype.itemsize)
            self._shapes[name] = shape
            (self.folder / INDEX).write_text(json.dumps(list(self._shapes)))
        elif self._shapes[name] != shape:
            raise ValueError(f"output {name}: shape {shape} differs from the {self._shapes[name]} written before")
        row_bytes = math.prod(shape[1:]) * array.dtype.itemsize
        with open(path, "r+b") as handle:
            handle.seek(self._offsets[name] + start * row_bytes)
            handle.write(memoryview(array.reshape(-1)).cast("B"))

    def write_all(self, outputs: Mapping[str, np.ndarray], start: int = 0, total: int | None = None) -> None:
        """Each output converted (``np.asarray``), written and let go before the next."""
        for name in list(outputs):
            self.write(name, np.asarray(outputs[name]), start, total)


class StoredOutputs(Mapping):
    """A runtime's outputs as a read-only mapping; each value is memory-mapped when asked for."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        index = self.folder / INDEX
        if not index.exists():
            raise FileNotFoundError(f"{self.folder}: no {INDEX}; the runtime wrote no outputs")
        self._names = json.loads(index.read_text())

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return np.load(self.folder / _file_name(name), mmap_mode="r")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def read_outputs(folder: Path | str) -> StoredOutputs:
    return StoredOutputs(folder)


def load_outputs(folder: Path | str) -> dict[str, np.ndarray]:
    """Every output in memory (small models, tests)."""
    return {name: np.array(array) for name, array in read_outputs(folder).items()}


def plan_calls(shapes: Mapping[str, tuple[int, ...]], batch: int, budget_bytes: int,
               itemsize: int = 4, split_outputs: bool = True) -> list[tuple[list[str], bool]]:
    """``[(output names, one image per call?)]`` covering every output once.

    ``shapes`` are per image (no batch axis). The whole batch in one call when it fits the
    budget; otherwise groups (in model order) of at most ``budget_bytes`` of one image's
    outputs, each group run once per image. An output larger than the budget is a group alone.
    Without ``split_outputs`` (a runtime for which a subset costs as much memory as all of them),
    every output in one call per image.
    """
    sizes = {name: math.prod(shape) * itemsize for name, shape in shapes.items()}
    if sum(sizes.values()) * batch <= budget_bytes:
        return [(list(sizes), False)]
    if not split_outputs:
        return [(list(sizes), True)]
    groups: list[list[str]] = []
    current, used = [], 0
    for name, size in sizes.items():
        if current and used + size > budget_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    if current:
        groups.append(current)
    return [(group, True) for group in groups]


def static_shapes(shapes: Mapping[str, tuple | list]) -> dict[str, tuple[int, ...]] | None:
    """Per-image shapes from shapes with a leading batch axis, or None if any other axis is unknown."""
    result = {}
    for name, shape in shapes.items():
        dims = tuple(shape)[1:]
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in dims):
            return None
        result[name] = tuple(int(d) for d in dims)
    return result


def run_on_inputs(run: RunFn, inputs_path: Path | str, head: str, store: OutputStore,
                  shapes: Mapping[str, tuple[int, ...]] | None = None,
                  budget_mb: float = DEFAULT_BUDGET_MB, streams: bool = False, split_outputs: bool = True,
                  one_image: bool = False) -> dict:
    """Every output of ``run`` on the seeded random batch, and ``photos:<head>`` on the
    photographs, written into ``store``; returns how the calls were split.

    ``run(images, names)`` returns the outputs named (all of them when ``names`` is None), as
    numpy arrays or anything ``np.asarray`` converts: they are converted and written one at a time.
    Without ``shapes`` (per image) the random batch is one call for every output. A runtime
    that ``streams`` (``run(images, None, sink=...)`` hands each output to the sink as it is
    computed, keeping nothing: PyTorch's forward hooks) needs no groups: one call per image.
    ``one_image``: one image per call even where the outputs fit the budget, for a graph whose
    intermediates are as large as another graph's outputs that did not (ONNX's logits-only file).
    """
    with np.load(inputs_path) as data:
        images = data["images"]
        photos = data["photos"] if "photos" in data.files else None
    batch = len(images)
    plan = (plan_calls(shapes, batch, int(budget_mb * 2**20), split_outputs=split_outputs) if shapes is not None
            else [(None, False)])
    if one_image:
        plan = [(names, True) for names, _ in plan]
    per_image = any(one for _, one in plan)
    if per_image and streams:
        plan = [(None, True)]  # every output in one call per image, each written as it is computed
        for i in range(batch):
            def sink(name: str, array: np.ndarray, i: int = i) -> None:
                store.write(name, array, start=i, total=batch)
            store.write_all(run(images[i:i + 1], None, sink=sink), start=i, total=batch)
    else:
        for names, one_image in plan:
            if one_image:
                for i in range(batch):
                    store.write_all(run(images[i:i + 1], names), start=i, total=batch)
            else:
                store.write_all(run(images, names))
    if photos is not None and len(photos):
        # head output only; one photograph per call where one image's outputs had to be split. Such
        # a call asks for the group that holds the head rather than the head alone: a
        # compiled runtime then reuses that group's compiled graph instead of compiling another
        # (XLA: 5-8 s on cait_m48_448), and the other outputs are dropped.
        step = 1 if per_image else len(photos)
        with_head = next((names for names, _ in plan if names and head in names), None)
        ask = with_head if per_image and with_head else [head]
        for i in range(0, len(photos), step):
            head_out = np.asarray(run(photos[i:i + step], ask)[head])
            store.write(PHOTO_PREFIX + head, head_out, start=i, total=len(photos))
    return {"groups": [len(names) if names else "all" for names, _ in plan], "per_image": per_image,
            "budget_mb": budget_mb}


class OutputsView(Mapping):
    """Some outputs of a mapping under other names; reads nothing until a value is asked for,
    and keeps nothing (a memory-mapped value is unmapped once the caller lets it go)."""

    def __init__(self, source: Mapping[str, np.ndarray], names: Mapping[str, str]):
        self._source, self._names = source, dict(names)  # {name here: name in source}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._source[self._names[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def split_photo_outputs(outputs: Mapping[str, np.ndarray]) -> tuple[OutputsView, OutputsView]:
    """(outputs on the random batch, head outputs on the photographs keyed by head name)."""
    main = OutputsView(outputs, {k: k for k in outputs if not k.startswith(PHOTO_PREFIX)})
    photos = OutputsView(outputs, {k[len(PHOTO_PREFIX):]: k for k in outputs if k.startswith(PHOTO_PREFIX)})
    return main, photos
