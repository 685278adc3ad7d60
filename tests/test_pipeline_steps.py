"""The port as a list of steps (progress counted from the list, never by hand) and the worker protocol's
records (a misspelt or missing key stops a job at the boundary, naming it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vit_porting.families.registry import get_variant
from vit_porting.pipeline.options import PortOptions
from vit_porting.pipeline.port import port_steps
from vit_porting.pipeline.runtimes import artifact_steps
from vit_porting.pipeline.steps import Context, Progress, Step
from vit_porting.workers.jobs import RecordError, ReferenceJob, RunFileResult, SourceJob
from vit_porting.workers.protocol import worker_main


class _Fake(Step):
    def __init__(self, title: str, applies=True, then=None):
        self.title, self._applies, self._then = title, applies, then

    def applies(self, ctx):
        return self._applies(ctx) if callable(self._applies) else self._applies

    def run(self, ctx):
        if self._then:
            self._then(ctx)


def _context(tmp_path: Path, **options) -> tuple[Context, list[str]]:
    lines: list[str] = []
    opts = PortOptions(log=lines.append, **options)
    spec = get_variant("cait_xxs24_224")
    return Context(spec=spec, options=opts, folder=tmp_path, work=tmp_path, inputs=tmp_path / "in.npz",
                   source=tmp_path / "s.safetensors"), lines


def test_the_count_is_derived_and_grows_when_a_step_finds_more_work(tmp_path):
    """A step that learns of a GPU makes the CUDA step apply: the total grows from then on, and every
    line's count is the steps known at that moment."""
    ctx, lines = _context(tmp_path)
    found_gpu = lambda c: c.devices.update(cuda=True)  # noqa: E731
    steps = [_Fake("a"), _Fake("skipped", applies=False), _Fake("reference", then=found_gpu),
             _Fake("cuda", applies=lambda c: c.devices["cuda"]), _Fake("last")]
    progress = Progress(lines.append)
    progress.run(steps, ctx)
    numbered = [line for line in lines if line.startswith("[")]
    assert numbered == ["[1/3] a ...", "[2/3] reference ...", "[3/4] cuda ...", "[4/4] last ..."]
    assert list(progress.timings) == ["a", "reference", "cuda", "last"]


def test_which_port_steps_apply_follows_the_options(tmp_path):
    ctx, _ = _context(tmp_path, exports=False)
    titles = [s.title for s in port_steps(ctx) if s.applies(ctx)]
    assert titles == ["loading source weights (PyTorch)", "converting to Keras, running it",
                      "running the PyTorch reference", "checking the round trip (Keras -> safetensors -> PyTorch)",
                      "comparing outputs"]
    ctx, _ = _context(tmp_path, reduced_precision=True, backends=("tensorflow", "torch"))
    applying = [s.title for s in port_steps(ctx) if s.applies(ctx)]
    assert len(applying) == 17 and "running keras_torch (model.keras on Keras' torch backend)" in applying
    assert [t for t in applying if "int8" in t] == [  # written, then each kind run in its own process
        "writing model_int8.onnx, model_fp16.onnx (ONNX Runtime)",
        "writing model.tflite, model_fp16.tflite, model_int8.tflite (LiteRT)",
        "running onnx_int8, onnx_fp16 (ONNX Runtime)", "running litert_fp32, litert_fp16, litert_int8 (ai-edge-litert)"]


def test_a_recheck_runs_the_variant_files_a_folder_holds(tmp_path):
    ctx, _ = _context(tmp_path)
    variants = [s for s in artifact_steps(ctx) if "ONNX Runtime)" in s.title or "ai-edge-litert" in s.title]
    assert [s.applies(ctx) for s in variants] == [False, False]
    (tmp_path / "model_int8.onnx").write_bytes(b"")
    assert [s.applies(ctx) for s in variants] == [True, False]


def test_a_job_record_refuses_unknown_and_missing_keys():
    job = SourceJob(spec={}, weights="random", out="x")
    assert job.to_json() == {"job": "source", "spec": {}, "weights": "random", "out": "x", "seed": 0,
                             "mapping": None, "new_head": False}
    assert SourceJob.from_json({**job.to_json(), "result": "r.json"}) == job
    with pytest.raises(RecordError, match=r"SourceJob: unknown keys \['wieghts'\]; missing keys \['weights'\]"):
        SourceJob.from_json({"job": "source", "spec": {}, "wieghts": "random", "out": "x"})
    with pytest.raises(RecordError, match="RunFileResult: missing keys"):
        RunFileResult.from_json({"ok": True, "keras": "3"})


def test_a_worker_reads_its_job_into_the_record_and_writes_the_result(tmp_path):
    job = ReferenceJob(spec={}, source="s", inputs="i", out="o", budget_mb=12.5)
    path = tmp_path / "job.json"
    path.write_text(json.dumps({**job.to_json(), "result": str(tmp_path / "result.json")}))
    seen = []

    def handler(received: ReferenceJob):
        seen.append(received)
        return {"done": True}

    worker_main({ReferenceJob: handler}, (), [str(path)])
    assert seen == [job]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["done"] and result["ok"] and result["seconds"] >= 0 and result["peak_rss_mb"] > 0
