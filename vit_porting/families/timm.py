"""What families whose reference is a timm model share: timm's keyword names for a config, and a
presentation whose PyTorch snippet opens the port's folder with timm itself (the folder holds timm's
own config.json). Standard library only, like the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vit_porting.families.presentation import Presentation, ReferenceSnippet
from vit_porting.families.spec import VariantSpec

TIMM_HUB_REPO = "timm/{tag}"  # Family.hub_repo_format of a checkpoint timm publishes


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
class TimmPresentation(Presentation):
    """A family published as timm publishes it: ``timm.create_model("local-dir:.")`` opens the folder."""

    library_tag: str = "timm"

    def reference_snippet(self, spec: VariantSpec) -> ReferenceSnippet:
        return ReferenceSnippet(
            title="PyTorch with timm (`model.safetensors`, `config.json`)", imports=("import timm",),
            build=("model = timm.create_model(\"local-dir:.\", pretrained=True).eval()",),
            call="model(x)", hub_line="model = timm.create_model(\"hf-hub:{repo}\", pretrained=True).eval()")
