"""``WEIGHTS=pretrained``: a variant's published weights from the local Hugging Face cache or the
hub, by the loader its family names (``Family.pretrained_from``). PyTorch side only."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from vit_porting.families.base import Origin, VariantSpec
from vit_porting.manifest import sha256_file
from vit_porting.mapping.tensor_io import CheckpointError
from vit_porting.safety import first_line
from vit_porting.weights.checkpoint import load_checkpoint


class PretrainedUnavailableError(CheckpointError):
    pass


def load_hf_hub_pretrained(spec: VariantSpec) -> tuple[dict[str, torch.Tensor], Origin]:
    """The state_dict of the Hugging Face repo ``spec.pretrained_tag`` (HF cache or hub),
    read without running code: model.safetensors, else pytorch_model.bin (weights_only)."""
    if not spec.pretrained_tag:
        raise PretrainedUnavailableError(f"{spec.name} has no published pretrained weights; "
                                         "pass --weights /path/to/checkpoint or --weights random")
    from huggingface_hub import hf_hub_download

    repo, failures = spec.pretrained_tag, []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = hf_hub_download(repo, filename)
            break
        except Exception as exc:  # noqa: BLE001 - any hub/cache failure ends the same way
            failures.append(f"{filename}: {type(exc).__name__}: {first_line(exc)}")
    else:
        raise _unavailable(f"{spec.name} (Hugging Face repo {repo})", repo, "; ".join(failures),
                           "the repo's model.safetensors / pytorch_model.bin, or a checkpoint of the original code")
    state = load_checkpoint(path)
    return state, Origin("pretrained", f"Hugging Face {repo} ({filename})", file=str(path), sha256=sha256_file(path))


def _unavailable(what: str, repo: str, detail: str, files: str) -> PretrainedUnavailableError:
    """The one message for pretrained weights that are neither cached nor downloadable."""
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    return PretrainedUnavailableError(
        f"pretrained weights for {what} are neither in the local Hugging Face cache nor downloadable"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {detail}\n"
        f"Alternatives: download on a connected machine (`hf download {repo}`) and copy ~/.cache/huggingface, "
        f"or pass --weights /path/to/checkpoint ({files}), or --weights random for an explicitly random-weights port.")


def load_timm_pretrained(spec: VariantSpec) -> tuple[dict[str, torch.Tensor], Origin]:
    if not spec.pretrained_tag:
        raise PretrainedUnavailableError(f"{spec.name} has no published pretrained weights; "
                                         "pass --weights /path/to/checkpoint or --weights random")
    import timm
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.pretrained_tag)
    hub_id = (cfg.hf_hub_id or "") if cfg else ""
    hub_id = hub_id + spec.pretrained_tag.split(".", 1)[0] if hub_id.endswith("/") else hub_id
    try:
        model = timm.create_model(spec.pretrained_tag, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - any hub/cache failure ends the same way
        detail = f"{type(exc).__name__}: {first_line(exc)}"
        raise _unavailable(f"{spec.name} ({spec.pretrained_tag}, Hugging Face repo {hub_id or '?'})", hub_id,
                           detail, "model.safetensors or .pth") from None
    origin = Origin("pretrained", f"timm {spec.pretrained_tag} (hf://{hub_id})")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, origin


# Family.pretrained_from -> loader
LOADERS: dict[str, Callable[[VariantSpec], tuple[dict[str, torch.Tensor], Origin]]] = {
    "timm": load_timm_pretrained, "hf-hub": load_hf_hub_pretrained}
