"""The worker protocol's records: one dataclass per job a worker takes and per result it gives back.

A job travels as a JSON file (``{"job": <name>, <field>: ...}``) and its result comes back as one; both
are read into these records at the boundary, so a misspelt or missing key stops the job there, naming
the record and the key, instead of failing deep inside a worker. ``protocol.call(job, work)`` runs a job
in its worker's process and returns its typed result. Standard library only.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from vit_porting.parity.outputs import DEFAULT_BUDGET_MB


class RecordError(ValueError):
    """A job or result file whose keys are not its record's."""


R = TypeVar("R", bound="Record")


@dataclass(kw_only=True)
class Record:
    """A JSON object with exactly these fields."""

    IGNORED: ClassVar[tuple[str, ...]] = ()  # keys the transport adds, not part of the record

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - set(cls.IGNORED))
        missing = sorted(f.name for f in fields(cls)
                         if f.name not in data and f.default is MISSING and f.default_factory is MISSING)
        if unknown or missing:
            raise RecordError(f"{cls.__name__}: " + "; ".join(
                ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])))
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(kw_only=True)
class Result(Record):
    """What every worker adds to its job's own result: how long it took and its peak memory."""

    IGNORED: ClassVar[tuple[str, ...]] = ("ok",)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


@dataclass(kw_only=True)
class Job(Record):
    """A job for one worker (``worker``: its short name, ``protocol.WORKERS``), named ``name`` in the file."""

    IGNORED: ClassVar[tuple[str, ...]] = ("job", "result")
    worker: ClassVar[str]
    name: ClassVar[str]
    result_type: ClassVar[type[Result]]

    def to_json(self) -> dict[str, Any]:
        return {"job": self.name, **asdict(self)}


# -- the PyTorch worker (run_torch) -----------------------------------------------------------------
@dataclass(kw_only=True)
class SourceResult(Result):
    origin: dict
    num_tensors: int
    num_params: int
    labels: dict | None = None


@dataclass(kw_only=True)
class SourceJob(Job):
    """WEIGHTS= resolved into one safetensors file (``out``) in the family's canonical key layout."""

    worker, name, result_type = "torch", "source", SourceResult
    spec: dict
    weights: str
    out: str
    seed: int = 0
    mapping: str | None = None
    new_head: bool = False


@dataclass(kw_only=True)
class ReferenceResult(Result):
    device: str
    torch: str
    cuda_available: bool
    calls: dict
    device_name: str | None = None


@dataclass(kw_only=True)
class ReferenceJob(Job):
    """The PyTorch reference's outputs on the parity inputs, into the output store ``out``."""

    worker, name, result_type = "torch", "reference", ReferenceResult
    spec: dict
    source: str
    inputs: str
    out: str
    intermediates: bool = False
    budget_mb: float = DEFAULT_BUDGET_MB
    device: str = "cpu"
    dtype: str = "float32"


@dataclass(kw_only=True)
class RoundtripResult(Result):
    strict_load: bool
    bit_exact: bool
    mismatched: list
    num_tensors: int
    not_compared: int
    not_compared_reasons: list
    hub_config: str | None = None


@dataclass(kw_only=True)
class RoundtripJob(Job):
    """``candidate`` (the mapping run backwards) loaded strictly into the reference and compared with ``source``."""

    worker, name, result_type = "torch", "roundtrip", RoundtripResult
    spec: dict
    source: str
    candidate: str
    mapping: str | None = None
    hub_config_dir: str | None = None
    labels: dict | None = None


@dataclass(kw_only=True)
class StateShapesResult(Result):
    shapes: dict
    parameters: dict


@dataclass(kw_only=True)
class StateShapesJob(Job):
    """Each reference's state_dict shapes, built on the meta device (no weights)."""

    worker, name, result_type = "torch", "state_shapes", StateShapesResult
    specs: list


@dataclass(kw_only=True)
class FactsResult(Result):
    facts: dict


@dataclass(kw_only=True)
class FactsJob(Job):
    """Parameters, weight bytes and FLOPs of each reference, on the meta device."""

    worker, name, result_type = "torch", "facts", FactsResult
    specs: list


@dataclass(kw_only=True)
class OnnxExportResult(Result):
    opset: int
    outputs: list
    external_data: bool
    weight_bytes: int
    files: list
    bytes: int
    nodes: int


@dataclass(kw_only=True)
class OnnxExportJob(Job):
    """model.onnx and model_attention.onnx from ``candidate`` (the round-tripped weights) into ``out``."""

    worker, name, result_type = "torch", "onnx", OnnxExportResult
    spec: dict
    candidate: str
    out: str
    labels: dict | None = None
    opset: int = 18
    external_data_bytes: int | None = None


# -- the Keras worker (run_keras) -------------------------------------------------------------------
@dataclass(kw_only=True)
class ConvertResult(Result):
    assigned: int
    timings: dict
    keras: str
    backend: str
    calls: dict
    output_order: list
    weight_paths: list
    exports: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class ConvertJob(Job):
    """Build the Keras model, assign the mapped weights, run it eagerly on the parity inputs, write the
    round-trip safetensors and (when asked) the SavedModel and model.keras."""

    worker, name, result_type = "keras", "convert", ConvertResult
    spec: dict
    source: str
    inputs: str
    outputs: str
    safetensors_out: str
    mapping: str | None = None
    budget_mb: float = DEFAULT_BUDGET_MB
    source_name: str | None = None
    serving: str = "auto"
    saved_model_out: str | None = None
    keras_out: str | None = None


@dataclass(kw_only=True)
class RunFileResult(Result):
    keras: str
    backend: str
    device: str
    output_order: list
    weight_paths: list
    calls: dict
    mode: str
    xla_error: str | None = None
    versions: dict = field(default_factory=dict)  # the backend library's, and the device's name
    device_name: str | None = None


@dataclass(kw_only=True)
class RunFileJob(Job):
    """model.keras reloaded from disk and run eagerly, or compiled (XLA, else a tf.function)."""

    worker, name, result_type = "keras", "run_file", RunFileResult
    spec: dict
    model: str
    inputs: str
    outputs: str
    compiled: bool = False
    budget_mb: float = DEFAULT_BUDGET_MB


# -- the ONNX Runtime worker (run_onnx) -------------------------------------------------------------
@dataclass(kw_only=True)
class OnnxRunResult(Result):
    checker: str
    opset: int
    nodes: int
    inputs: dict
    outputs: list
    attention_outputs: list
    onnxruntime: str
    provider: str
    calls: dict


@dataclass(kw_only=True)
class OnnxRunJob(Job):
    """Both ONNX files checked and run on one execution provider (``device``)."""

    worker, name, result_type = "onnx", "run", OnnxRunResult
    model: str
    attention_model: str
    inputs: str
    outputs: str
    device: str = "cpu"
    budget_mb: float = DEFAULT_BUDGET_MB


@dataclass(kw_only=True)
class OptimiseResult(Result):
    graphs: dict
    timing: dict
    head: str


@dataclass(kw_only=True)
class OptimiseJob(Job):
    """model.onnx's candidate serving graphs written, timed and run on the parity inputs."""

    worker, name, result_type = "onnx", "optimise", OptimiseResult
    folder: str
    model: str
    attention_model: str
    inputs: str
    outputs: str
    budget_mb: float = DEFAULT_BUDGET_MB


@dataclass(kw_only=True)
class VariantsResult(Result):
    variants: dict
    tensorflow: str | None = None


@dataclass(kw_only=True)
class WriteVariantsJob(Job):
    """The reduced-precision ONNX files of ``source`` written into ``folder``."""

    worker, name, result_type = "onnx", "write_variants", VariantsResult
    folder: str
    source: str


@dataclass(kw_only=True)
class OnnxVariantsJob(Job):
    """Each reduced-precision ONNX file of ``files`` ({variant: path}) run on the parity inputs."""

    worker, name, result_type = "onnx", "variants", VariantsResult
    files: dict
    inputs: str
    outputs: str
    budget_mb: float = DEFAULT_BUDGET_MB


# -- the SavedModel and LiteRT workers (run_savedmodel, run_litert) ---------------------------------
@dataclass(kw_only=True)
class SavedModelResult(Result):
    tensorflow: str
    signature_outputs: dict
    calls: dict
    devices: list


@dataclass(kw_only=True)
class SavedModelJob(Job):
    """saved_model/ loaded with tf.saved_model.load and its signatures run on the parity inputs."""

    worker, name, result_type = "savedmodel", "run", SavedModelResult
    saved_model: str
    inputs: str
    outputs: str
    budget_mb: float = DEFAULT_BUDGET_MB


@dataclass(kw_only=True)
class LiteRTConvertJob(Job):
    """The SavedModel's serving signature converted to the .tflite files in ``folder``."""

    worker, name, result_type = "litert", "convert", VariantsResult
    saved_model: str
    folder: str


@dataclass(kw_only=True)
class LiteRTRunJob(Job):
    """Each .tflite file of ``files`` ({variant: path}) run with ai-edge-litert on the parity inputs."""

    worker, name, result_type = "litert", "run", VariantsResult
    files: dict
    inputs: str
    outputs: str
    budget_mb: float = DEFAULT_BUDGET_MB


# -- the evaluation worker (run_eval) ---------------------------------------------------------------
@dataclass(kw_only=True)
class PredictResult(Result):
    runtime: str
    images: int
    classes: int
    info: dict  # the runtime's versions and timings (load, warm-up, timed images and seconds)


@dataclass(kw_only=True)
class PredictJob(Job):
    """One runtime's logits on the prepared uint8 ``pixels``, batch by batch, counting in ``progress``."""

    worker, name, result_type = "eval", "predict", PredictResult
    runtime: str
    spec: dict
    model: str
    pixels: str
    mean: list
    std: list
    out: str
    batch: int = 32
    progress: str | None = None


@dataclass(kw_only=True)
class AttentionResult(Result):
    outputs: list


@dataclass(kw_only=True)
class AttentionJob(Job):
    """Every output of model.keras (``source="keras"``) or saved_model/ on one preprocessed image."""

    worker, name, result_type = "eval", "attention", AttentionResult
    source: str
    spec: dict
    model: str
    image: str
    out: str


@dataclass(kw_only=True)
class TimmPreprocessResult(Result):
    config: dict
    transform: str
    timm: str


@dataclass(kw_only=True)
class TimmPreprocessJob(Job):
    """timm's eval transform on image files (a timm model's data config, or ``config`` as given)."""

    worker, name, result_type = "eval", "timm_preprocess", TimmPreprocessResult
    images: list
    out: str
    timm_model: str | None = None
    config: dict | None = None
