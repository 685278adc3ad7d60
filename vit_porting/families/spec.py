"""A variant: the one record every part of the toolkit passes around (standard library only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


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
        """JSON-ready; ``vit_porting.families.registry.variant_from_dict`` reads it back (the config
        class is the registered family's)."""
        return {"name": self.name, "family": self.family, "config": asdict(self.config),
                "timm_name": self.timm_name, "pretrained_tag": self.pretrained_tag,
                "preprocessing": self.preprocessing, "paper": self.paper, "license": self.license,
                "datasets": list(self.datasets), "pretraining": self.pretraining, "label_set": self.label_set,
                "published_top1": self.published_top1, "published_top1_source": self.published_top1_source}
