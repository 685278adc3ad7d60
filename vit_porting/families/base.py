"""The family contract: what a port asks of a model family, and nothing else.

A family is a package (``vit_porting/families/<name>/`` for the built-in ones) holding

- ``__init__.py``: its config dataclass, its variants and a ``Family`` object. Imports neither a
  framework nor anything beyond the standard library and this package's contract modules, so
  resolving a variant never loads torch or TensorFlow (importing TensorFlow before torch aborts a
  process, and the orchestrating process loads neither);
- ``model.py``: the Keras 3 model (``KerasSide``). Imports Keras and numpy only: it is all a
  user needs to open a published ``model.keras``;
- ``reference.py``: the PyTorch reference (``TorchSide``), run only in worker processes;
- its YAML mapping and rename files, shipped as package data and read through
  ``importlib.resources``, so an installed wheel ports as a checkout does.

This module is what a port needs. What the model card, publishing and ``vit-port attention`` say
about a family is its ``presentation`` (``presentation.py``); timm-based families share the helpers
of ``timm.py``. Shared code reads a family only through these types and never compares a family's
name. Standard library only.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from vit_porting.families.presentation import Presentation
from vit_porting.families.spec import VariantSpec

if TYPE_CHECKING:  # annotations only: importing either framework here would defeat the split
    import keras
    import torch


@dataclass
class Origin:
    """What the weights are, recorded in every report and manifest."""

    kind: str  # "pretrained" | "file" | "random"
    description: str
    seed: int | None = None
    file: str | None = None
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "seed": self.seed, "file": self.file,
                "sha256": self.sha256, "notes": self.notes, "random_weights": self.is_random}


@dataclass(frozen=True)
class Layout:
    """Another key layout the family's checkpoints come in: detected by a regex over the keys
    and carried into the canonical layout by a declarative rename file (package data)."""

    name: str
    detect: str
    renames: str
    description: str


@dataclass(frozen=True)
class Perturbation:
    """What ``WEIGHTS=random`` scales, as regexes over the reference's ``state_dict`` keys.

    A freshly initialised model hides porting bugs: LayerScale gammas of 1e-5 silence whole
    branches and query/key weights of std 0.02 make every attention map nearly uniform. The
    generic part (biases, norm weights, depthwise kernels, BatchNorm statistics) is shared
    (``vit_porting.weights.random``); these name the family's own parameters.
    """

    layer_scale: str | None = None  # LayerScale gammas -> U(0.1, 1)
    query_key: str | None = None  # query/key projection weights -> x5 (peaked attention)
    head_mix: str | None = None  # talking-heads mixing matrices -> I + N(0, 1/heads)
    fused_qkv: str | None = None  # fused [q; k; v] weights -> q, k rows for attention logits of std 3, v as is


@runtime_checkable
class KerasSide(Protocol):
    """``<family>/model.py``: importing it registers the family's serializable Keras layers."""

    def build_keras(self, config: Any, initializer: str = "random", name: str = "model",
                    intermediates: bool = False) -> keras.Model:
        """A functional model returning a dict: ``logits`` (``features`` with no classifier) and
        one ``<block>_attn`` map per attention layer; with ``intermediates`` also each block's
        output ``<block>_out``. ``initializer="zeros"`` skips an init the converter overwrites.
        The classifier's Dense layers are named as ``Family.keras_heads`` says: their inputs are
        the pooled features (the SavedModel's ``features`` signature)."""


@runtime_checkable
class TorchSide(Protocol):
    """``<family>/reference.py``: the PyTorch model the port is checked against."""

    def build_reference(self, spec: VariantSpec) -> torch.nn.Module:
        """The reference model of ``spec``, randomly initialised, eval mode (buildable on the
        meta device)."""

    def reference_taps(self, model: torch.nn.Module, intermediates: bool = False) -> dict[str, torch.nn.Module]:
        """{Keras output name: module whose forward output is that tensor}: every attention map
        (``<block>_attn``) and, with ``intermediates``, every block's output (``<block>_out``)."""

    def call_reference(self, model: torch.nn.Module, images_nchw: torch.Tensor) -> torch.Tensor:
        """The head output (logits, or pooled features) of ``model`` on NCHW images."""

    def write_hub_config(self, model: torch.nn.Module, spec: VariantSpec, folder: str,
                         labels: dict | None) -> str | None:
        """Write, beside ``model.safetensors`` in ``folder``, the file the reference library's own
        loader reads (timm's ``config.json``: ``timm.create_model("hf-hub:owner/name")``), and
        return its name; None where that loader would compute another function than the port
        (write nothing then, so that it fails loudly instead)."""


@dataclass(frozen=True)
class Family:
    """Everything a port asks of one architecture family.

    ``package`` is the family's Python package: its YAML files are read from it, and its Keras
    and PyTorch sides are its ``model`` and ``reference`` modules unless named otherwise.
    """

    name: str  # the registry key and VariantSpec.family
    title: str  # short display name: "CaiT"
    package: str
    config_class: type
    variants: tuple[VariantSpec, ...]
    mapping: str  # the canonical layout's mapping file, in the package
    source_label: str  # the library whose key layout is canonical: "timm", "Hugging Face transformers"
    classifier: str | tuple[str, ...] = "head"  # state_dict prefix(es) of the classifier(s) a new head replaces
    keras_heads: tuple[str, ...] = ("head",)  # classifier Dense layers; their inputs averaged are the features
    layouts: tuple[Layout, ...] = ()
    perturbation: Perturbation = Perturbation()
    reference_libraries: tuple[str, ...] = ()  # distributions the reference needs, recorded in manifests
    # the Hugging Face repository of a variant's published weights, from its pretrained tag
    hub_repo_format: str = "{tag}"
    # how WEIGHTS=pretrained reads them (vit_porting/weights/pretrained.py): "timm" (timm.create_model(tag,
    # pretrained=True): its cache, else the hub) or "hf-hub" (the repository's model.safetensors, else
    # pytorch_model.bin, read without running code)
    pretrained_from: str = "timm"
    keras_module: str = ""  # default: <package>.model
    torch_module: str = ""  # default: <package>.reference
    presentation: Presentation = Presentation()  # what the card, publishing and the attention picture say

    def __post_init__(self):
        object.__setattr__(self, "keras_module", self.keras_module or f"{self.package}.model")
        object.__setattr__(self, "torch_module", self.torch_module or f"{self.package}.reference")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"family {self.name}: variant names repeat")
        wrong = [v.name for v in self.variants if v.family != self.name]
        if wrong:
            raise ValueError(f"family {self.name}: variants of another family: {', '.join(wrong)}")

    def variant_map(self) -> dict[str, VariantSpec]:
        return {v.name: v for v in self.variants}

    def hub_repo(self, spec: VariantSpec) -> str | None:
        """The Hugging Face repository of the published checkpoint (the card's ``base_model``, and
        where ``WEIGHTS=pretrained`` looks in the local cache)."""
        return self.hub_repo_format.format(tag=spec.pretrained_tag) if spec.pretrained_tag else None

    def resource(self, name: str) -> resources.abc.Traversable:
        """A file of the family's package (its mapping and rename files), read as the installed
        package holds it."""
        return resources.files(self.package).joinpath(name)

    # -- the two framework sides (imported on demand, in the process that needs them) --------
    def keras(self) -> KerasSide:
        return importlib.import_module(self.keras_module)

    def torch(self) -> TorchSide:
        return importlib.import_module(self.torch_module)
