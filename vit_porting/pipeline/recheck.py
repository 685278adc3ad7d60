"""``vit-port parity``: parity re-checked on an existing artifact folder, nothing converted: the PyTorch
reference loads its model.safetensors, every other runtime its artifact on disk."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from vit_porting.export.saved_model import ONNX_ATTENTION_FILE, ONNX_FILE
from vit_porting.manifest import METADATA_NAME, read_record, verify_manifest
from vit_porting.parity.outputs import DEFAULT_BUDGET_MB
from vit_porting.parity.verdict import ParityReport
from vit_porting.pipeline.options import PortError, PortOptions
from vit_porting.pipeline.port import finish, log_verdict
from vit_porting.pipeline.runtimes import (
    Compare,
    CudaReference,
    Reference,
    artifact_steps,
    prepare_inputs,
    skipped_backends,
)
from vit_porting.pipeline.steps import Context, Progress
from vit_porting.safety import FolderLock, make_scratch, remove_stale_scratch


def recheck(folder: Path | str, log: Callable[[str], None] | None = None,
            backends: tuple[str, ...] = ("tensorflow",)) -> dict:
    """Re-run parity on ``folder``. Rewrites parity.json/.md, the card and the manifest (verdict and
    checksums); returns the report as parity.json holds it."""
    log = log or PortOptions().log
    folder = Path(folder)
    start = time.perf_counter()
    if not (folder / METADATA_NAME).exists():
        raise PortError(f"{folder} has no {METADATA_NAME}; port it first (vit-port port <variant>)")
    with FolderLock(folder, f"vit-port parity {folder.name}"):  # a port --force must not replace it meanwhile
        report = _recheck(folder, log, backends)
    log_verdict(log, report.passed, folder, start)
    return report.to_json()


def _recheck(folder: Path, log: Callable[[str], None], backends: tuple[str, ...]) -> ParityReport:
    problems = [p for p in verify_manifest(folder) if not p.startswith(("parity.json", "parity.md"))]
    if problems:
        raise PortError(f"{folder} does not match its manifest ({len(problems)} problems):\n  "
                        + "\n  ".join(problems))
    record = read_record(folder)
    previous = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").exists() else {}
    settings = {"batch": 2, "input_seed": 0, "photos": True, "output_budget_mb": DEFAULT_BUDGET_MB,
                **previous.get("options", {})}
    missing = [n for n in ("model.safetensors", "model.keras", "saved_model", ONNX_FILE, ONNX_ATTENTION_FILE)
               if not (folder / n).exists()]
    if missing:
        raise PortError(f"{folder} lacks {', '.join(missing)}; port it again with exports")
    remove_stale_scratch(folder.parent)
    work = make_scratch(folder.parent, f"{folder.name}.parity")
    log(f"Re-checking {folder} (no conversion: the artifacts on disk against PyTorch on model.safetensors)")
    try:
        options = PortOptions(backends=backends, log=log, **settings)
        ctx = Context(spec=record.spec, options=options, folder=folder, work=work, inputs=work / "inputs.npz",
                      source=folder / "model.safetensors", origin=record.origin, labels=record.labels,
                      roundtrip=previous.get("roundtrip"), exports=previous.get("exports") or {})
        ctx.inputs_detail = prepare_inputs(ctx.inputs, record.spec, options.batch, options.input_seed, options.photos)
        ctx.skipped = skipped_backends(ctx)
        progress = Progress(log)
        progress.run([Reference(" on model.safetensors"), CudaReference(), *artifact_steps(ctx),
                      Compare(previous.get("mapping"), {"options": settings, "recheck": True})], ctx)
        finish(ctx.report, folder, record.spec, record.origin, ctx.inputs_detail, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ctx.report
