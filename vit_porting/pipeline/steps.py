"""A port (or a re-check) as a list of steps: each knows its title and whether it applies, so the
progress count is derived from the list, never added up by hand.

Whether a later step applies can depend on what an earlier one found (a CUDA device, a backend
whose package is missing), so the total is recounted before each step: ``[3/12]`` always says how
many steps are known to remain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vit_porting.families.base import VariantSpec
from vit_porting.parity.verdict import RuntimeRun
from vit_porting.pipeline.options import PortOptions


@dataclass
class Context:
    """What the steps of one port or re-check share: where they write, and what each found.

    ``folder`` is where the artifacts are (a port's own scratch ``artifact/`` until it is renamed into
    place; the folder a re-check reads); ``work`` holds everything that is not an artifact."""

    spec: VariantSpec
    options: PortOptions
    folder: Path
    work: Path
    inputs: Path
    source: Path  # the canonical-layout weights the PyTorch reference reads
    origin: dict = field(default_factory=dict)
    labels: dict | None = None
    inputs_detail: dict = field(default_factory=dict)
    references: dict[str, Any] = field(default_factory=dict)  # {device: outputs}
    devices: dict = field(default_factory=lambda: {"cpu": True, "cuda": False})
    runs: list[RuntimeRun] = field(default_factory=list)
    variant_runs: list[RuntimeRun] = field(default_factory=list)
    output_order: list[str] = field(default_factory=list)
    weight_paths: list[str] = field(default_factory=list)
    roundtrip: dict | None = None
    exports: dict = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    onnx_candidates: dict[str, str] = field(default_factory=dict)  # {graph: path} of model.onnx's candidates
    variant_files: dict[str, Any] = field(default_factory=dict)  # what the reduced-precision writers made
    report: Any = None

    @property
    def log(self) -> Callable[[str], None]:
        return self.options.log

    def cpu_reference(self) -> dict[str, np.ndarray]:
        return self.references["cpu"]


class Step:
    """One step: ``title`` for the progress line, ``applies`` to say whether it runs, ``run`` to do it
    (returning the worker's result record, if any, for the step's peak memory)."""

    title = ""

    def applies(self, ctx: Context) -> bool:
        return True

    def run(self, ctx: Context) -> Any:
        raise NotImplementedError


class Progress:
    """Runs the steps that apply, numbered, timed, with each worker's peak memory; keeps the timings
    for the report (``steps`` of parity.json, keyed by title)."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.timings = log, {}

    def run(self, steps: Sequence[Step], ctx: Context) -> None:
        done = 0
        for i, step in enumerate(steps):
            if not step.applies(ctx):
                continue
            done += 1
            total = done + sum(1 for later in steps[i + 1:] if later.applies(ctx))
            self.log(f"[{done}/{total}] {step.title} ...")
            start = time.perf_counter()
            result = step.run(ctx)
            seconds = time.perf_counter() - start
            peak = getattr(result, "peak_rss_mb", None) or None
            self.timings[step.title] = {"seconds": round(seconds, 3), "peak_rss_mb": peak}
            self.log(f"      done in {seconds:.1f} s" + (f", peak RSS {peak:.0f} MB" if peak else ""))
