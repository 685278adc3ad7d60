"""The family contract: what shared code may ask of a model family, and nothing else.

A family is a package (``vit_porting/families/<name>/`` for the built-in ones) holding

- ``__init__.py``: its config dataclass, its variants and a ``Family`` object (this module's
  class or a subclass). Imports neither a framework nor anything beyond the standard library,
  so resolving a variant never loads torch or TensorFlow (importing TensorFlow before torch
  aborts a process, and the orchestrating process loads neither);
- ``model.py``: the Keras 3 model (``KerasSide``). Imports Keras and numpy only: it is all a
  user needs to open a published ``model.keras``;
- ``reference.py``: the PyTorch reference (``TorchSide``), run only in worker processes;
- its YAML mapping and rename files, shipped as package data and read through
  ``importlib.resources``, so an installed wheel ports as a checkout does.

Shared code (engine, converter, exporters, harness, card, publish, eval, attention) reads a
family only through these types and never compares a family's name.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing either framework here would defeat the split
    import keras
    import torch

    from vit_porting.mapping.engine import MappingSpec, RenameSpec
    from vit_porting.weights.sources import Origin


def timm_keywords(config: Any, keywords: dict[str, str]) -> dict:
    """``config``'s fields under the timm keywords that ``keywords`` maps them to."""
    return {keyword: getattr(config, name) for name, keyword in keywords.items()}


def timm_model_args(spec: VariantSpec, variants: tuple[VariantSpec, ...], keywords: dict[str, str]) -> dict:
    """The timm keywords in which ``spec`` differs from the registered variant of its name (a
    reduced depth in the tests, another image size), so config.json and the card's snippet read like timm's."""
    registered = next((v for v in variants if v.name == spec.name), None)
    base = timm_keywords(registered.config, keywords) if registered else {}
    return {k: v for k, v in timm_keywords(spec.config, keywords).items() if k != "num_classes" and base.get(k) != v}


@dataclass(frozen=True)
class VariantSpec:
    """A named, buildable model: family, architecture config, source checkpoint, preprocessing.

    ``preprocessing`` uses timm's data-config names (``input_size``, ``crop_pct``, ``crop_mode``,
    ``interpolation``, ``mean``, ``std``) so that eval, the cards and the parity photographs all
    apply the transform the checkpoint was trained with. ``datasets`` are Hugging Face Hub
    dataset ids of its training data; ``pretraining`` says the same in words. ``label_set`` names
    the classes of its head for timm's ``ImageNetInfo`` (``imagenet-1k``): a port whose class
    count matches gets their names in every artifact; another head gets indices.
    ``published_top1`` is the ImageNet-1k top-1 (%) published for the checkpoint, with where it
    was published in ``published_top1_source``: the collection card quotes it beside the parity
    figures, so that a reader sees what the port is meant to preserve.
    """

    name: str
    family: str
    config: Any
    timm_name: str | None = None
    pretrained_tag: str | None = None
    preprocessing: dict = field(default_factory=dict)
    paper: str = ""
    license: str = ""
    datasets: tuple[str, ...] = ()
    pretraining: str = ""
    label_set: str = ""
    published_top1: float | None = None
    published_top1_source: str = ""

    def with_config(self, **overrides: Any) -> VariantSpec:
        """The same variant with config fields changed (class count, reduced depth in tests)."""
        return replace(self, config=replace(self.config, **overrides))

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def head_name(self) -> str:
        """The model's main output: ``logits``, or ``features`` for a feature extractor."""
        return "logits" if self.config.num_classes > 0 else "features"

    def to_dict(self) -> dict:
        return {"name": self.name, "family": self.family, "config": asdict(self.config),
                "timm_name": self.timm_name, "pretrained_tag": self.pretrained_tag,
                "preprocessing": self.preprocessing, "paper": self.paper, "license": self.license,
                "datasets": list(self.datasets), "pretraining": self.pretraining, "label_set": self.label_set,
                "published_top1": self.published_top1, "published_top1_source": self.published_top1_source}

    @classmethod
    def from_dict(cls, data: dict) -> VariantSpec:
        from vit_porting.families.registry import get_family

        config_class = get_family(data["family"]).config_class
        return cls(**{**data, "config": config_class(**data["config"]),
                      "datasets": tuple(data.get("datasets") or ())})


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
    (``vit_porting.weights.sources.perturb_``); these name the family's own parameters.
    """

    layer_scale: str | None = None  # LayerScale gammas -> U(0.1, 1)
    query_key: str | None = None  # query/key projection weights -> x5 (peaked attention)
    head_mix: str | None = None  # talking-heads mixing matrices -> I + N(0, 1/heads)
    fused_qkv: str | None = None  # fused [q; k; v] weights -> q, k rows for attention logits of std 3, v as is


@dataclass(frozen=True)
class ClassAttention:
    """Which outputs ``vit-port attention`` draws: attention maps whose query 0 is the class
    token and whose keys are [prefix tokens, patches] on a square grid."""

    outputs: str  # regex over output names, with one group: the block's index (drawing order)
    last_only: bool = False  # draw the last such block unless --blocks all
    title: str = "class-token attention"
    prefix_tokens: int = 1  # keys before the patches (class token; DeiT's distillation token too)


@dataclass(frozen=True)
class Rollout:
    """Which outputs attention rollout (Abnar & Zuidema 2020) multiplies: one full
    self-attention map per block, (B, heads, N, N) over the same N tokens in the same order
    ([prefix tokens, patches] on a square grid), so that their product means something. Read
    at the class token (query 0). A family whose maps are not square (keys downsampled, or
    tokens that change between blocks) has no rollout."""

    outputs: str  # regex over output names, with one group: the block's index (product order)
    prefix_tokens: int = 1  # tokens before the patches, the class token first
    title: str = "attention rollout"


@dataclass(frozen=True)
class ReferenceSnippet:
    """How a PyTorch user builds the reference model and loads ``model.safetensors`` (model card).

    ``build`` are the lines after the imports that leave an eval-mode ``model`` with the weights
    loaded, run in the folder holding ``model.safetensors``; ``call`` is the expression on an NCHW
    tensor ``x`` that gives the head output; ``hub_line``, where the library loads a published
    repository by itself, is that line with ``{repo}`` for the repository id.
    """

    title: str
    imports: tuple[str, ...]
    build: tuple[str, ...]
    call: str
    hub_line: str | None = None


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

    def load_pretrained(self, spec: VariantSpec) -> tuple[dict[str, torch.Tensor], Origin]:
        """The published weights of ``spec`` from the local cache or the hub, in the canonical layout."""

    def write_hub_config(self, model: torch.nn.Module, spec: VariantSpec, folder: str,
                         labels: dict | None) -> str | None:
        """Write, beside ``model.safetensors`` in ``folder``, the file the reference library's own
        loader reads (timm's ``config.json``: ``timm.create_model("hf-hub:owner/name")``), and
        return its name; None where that loader would compute another function than the port
        (write nothing then, so that it fails loudly instead)."""


@dataclass(frozen=True)
class Family:
    """Everything shared code asks of one architecture family.

    ``package`` is the family's Python package: its YAML files are read from it, and its Keras
    and PyTorch sides are its ``model`` and ``reference`` modules unless named otherwise.
    Subclasses override ``reference_snippet``, ``hub_repo``, ``class_attention`` and ``rollout``
    where the family's answer depends on the variant.
    """

    name: str  # the registry key and VariantSpec.family
    title: str  # short display name: "CaiT"
    full_name: str  # "CaiT (Class-Attention in Image Transformers)"
    package: str
    config_class: type
    variants: tuple[VariantSpec, ...]
    mapping: str  # the canonical layout's mapping file, in the package
    source_label: str  # the library whose key layout is canonical: "timm", "Hugging Face transformers"
    reference_libraries: tuple[str, ...] = ()  # distributions the reference needs, recorded in manifests
    keras_module: str = ""  # default: <package>.model
    torch_module: str = ""  # default: <package>.reference
    classifier: str | tuple[str, ...] = "head"  # state_dict prefix(es) of the classifier(s) a new head replaces
    layouts: tuple[Layout, ...] = ()
    perturbation: Perturbation = Perturbation()
    library_tag: str = ""  # the Hub tag of the reference library ("timm"), only where its loader is tested
    keras_heads: tuple[str, ...] = ("head",)  # classifier Dense layers; their inputs averaged are the features
    # The name of the PyTorch form's weights when published. The reference library's loaders read
    # model.safetensors; a family on whose weights such a loader computes another function (CvT:
    # transformers' exact GELU, even with no config.json) publishes them under another name, so the
    # loader fails loudly instead.
    hub_weights_name: str = "model.safetensors"

    def __post_init__(self):
        object.__setattr__(self, "keras_module", self.keras_module or f"{self.package}.model")
        object.__setattr__(self, "torch_module", self.torch_module or f"{self.package}.reference")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"family {self.name}: variant names repeat")
        wrong = [v.name for v in self.variants if v.family != self.name]
        if wrong:
            raise ValueError(f"family {self.name}: variants of another family: {', '.join(wrong)}")

    # -- variants ---------------------------------------------------------------------------
    def variant_map(self) -> dict[str, VariantSpec]:
        return {v.name: v for v in self.variants}

    # -- files (package data) ---------------------------------------------------------------
    def resource(self, name: str) -> resources.abc.Traversable:
        """A file of the family's package, read as the installed package holds it."""
        return resources.files(self.package).joinpath(name)

    def load_mapping(self, override: str | None = None, config: Any = None) -> MappingSpec:
        """The family's mapping, or the file a user passed to replace it (``--mapping FILE``);
        given a ``config``, only the rules that exist for it (``when:``)."""
        from vit_porting.mapping.engine import MappingSpec

        mapping = MappingSpec.load(override or self.resource(self.mapping))
        return mapping if config is None else mapping.for_config(config)

    def load_renames(self, layout: Layout) -> RenameSpec:
        from vit_porting.mapping.engine import RenameSpec

        return RenameSpec.load(self.resource(layout.renames))

    # -- the two framework sides (imported on demand, in the process that needs them) --------
    def keras(self) -> KerasSide:
        return importlib.import_module(self.keras_module)

    def torch(self) -> TorchSide:
        return importlib.import_module(self.torch_module)

    # -- card and attention facts -----------------------------------------------------------
    def hub_repo(self, spec: VariantSpec) -> str | None:
        """The Hugging Face repo of the published checkpoint (the card's ``base_model``)."""
        return spec.pretrained_tag

    def reference_snippet(self, spec: VariantSpec) -> ReferenceSnippet | None:
        """How to run ``model.safetensors`` in the reference library (None: no snippet)."""
        return None

    def class_attention(self, spec: VariantSpec) -> ClassAttention | None:
        """The outputs ``vit-port attention`` draws (None: the family has none)."""
        return None

    def rollout(self, spec: VariantSpec) -> Rollout | None:
        """The maps ``vit-port attention`` multiplies into attention rollout (None: it does not apply)."""
        return None


class TimmFamily(Family):
    """A family whose reference is a timm model published under ``timm/<pretrained tag>``: the
    port's folder holds timm's own config.json, so timm opens it (and its Hub copy) by itself."""

    def hub_repo(self, spec: VariantSpec) -> str | None:
        return f"timm/{spec.pretrained_tag}" if spec.pretrained_tag else None

    def reference_snippet(self, spec: VariantSpec) -> ReferenceSnippet:
        return ReferenceSnippet(
            title="PyTorch with timm (`model.safetensors`, `config.json`)", imports=("import timm",),
            build=("model = timm.create_model(\"local-dir:.\", pretrained=True).eval()",),
            call="model(x)", hub_line="model = timm.create_model(\"hf-hub:{repo}\", pretrained=True).eval()")
