"""What the model card, publishing and ``vit-port attention`` say about a family: the part of the
contract a port does not need (``base.py`` is that part). Standard library only.

A family's answers may depend on the variant (a distilled DeiT has two prefix tokens): subclass
``Presentation`` and override the methods, as the built-in families do.
"""

from __future__ import annotations

from dataclasses import dataclass

from vit_porting.families.spec import VariantSpec


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


@dataclass(frozen=True)
class Presentation:
    """The card's and the attention picture's facts about a family."""

    full_name: str = ""  # "CaiT (Class-Attention in Image Transformers)"
    library_tag: str = ""  # the Hub tag of the reference library ("timm"), only where its loader is tested
    # The name of the PyTorch form's weights when published. The reference library's loaders read
    # model.safetensors; a family on whose weights such a loader computes another function (CvT:
    # transformers' exact GELU, even with no config.json) publishes them under another name, so the
    # loader fails loudly instead.
    hub_weights_name: str = "model.safetensors"

    def reference_snippet(self, spec: VariantSpec) -> ReferenceSnippet | None:
        """How to run ``model.safetensors`` in the reference library (None: no snippet)."""
        return None

    def class_attention(self, spec: VariantSpec) -> ClassAttention | None:
        """The outputs ``vit-port attention`` draws (None: the family has none)."""
        return None

    def rollout(self, spec: VariantSpec) -> Rollout | None:
        """The maps ``vit-port attention`` multiplies into attention rollout (None: it does not apply)."""
        return None
