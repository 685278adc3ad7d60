"""Where source weights come from: timm pretrained (HF hub or its cache), a local file, or
explicitly random weights. PyTorch side only; never import TensorFlow here.

Whatever the origin, the result is written as one safetensors file in the family's canonical
key layout, which every later step (mapping, reference, round trip) reads.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping as MappingABC
from pathlib import Path

import torch

from vit_porting.families.base import Origin, Perturbation, VariantSpec
from vit_porting.families.registry import families, get_family
from vit_porting.manifest import sha256_file
from vit_porting.mapping.engine import MappingFileError, RenameError, family_mapping, family_renames
from vit_porting.mapping.tensor_io import CheckpointError
from vit_porting.safety import first_line

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
QKV_LOGIT_STD = 3.0  # attention logits of perturbed fused qkv weights: peaked (mean max probability ~0.35)
WRAPPER_KEYS = ("state_dict", "model", "model_ema", "module")
# torch's own lines around a weights-only refusal: its advice to retry with weights_only=False
# would run the very code just refused
_TORCH_REFUSAL_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


class PretrainedUnavailableError(CheckpointError):
    pass


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    # Training checkpoints nest the weights ({'model': ...}, {'state_dict': ...}); take the
    # first level that is a flat dict of tensors.
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in obj.items()):
            return obj
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    found = f"top-level keys: {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
    raise CheckpointError(
        f"{path}: no state_dict found (expected a dict of tensors, possibly under one of "
        f"{', '.join(WRAPPER_KEYS)}); found {found}")


def _refusal_detail(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only reader stopped at ("unsupported GLOBAL posix.system"), without
    torch's advice around it."""
    lines = (line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(exc).splitlines())
    return next((line for line in lines if line and not line.startswith(_TORCH_REFUSAL_BOILERPLATE)
                 and "weights_only" not in line), "not a pickle of tensors")


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without running any code it may carry.

    safetensors is preferred (no code path at all); pickles go through
    ``torch.load(weights_only=True)``, whose restricted unpickler refuses ``__reduce__`` payloads.
    Any failure is a one-line CheckpointError naming the file: the readers are parsers of
    untrusted bytes, whose exception types are no contract.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; "
                              f"use .safetensors or one of {', '.join(PICKLE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); it may be truncated: download it again")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - see the docstring
            raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc)}); "
                                  "it may be truncated or corrupt: download it again") from None
        return _unwrap(state, path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the pickle holds something other than tensors (possibly code) or is damaged, "
            f"and it was not executed ({_refusal_detail(exc)}). Get a .safetensors version of this "
            f"checkpoint, or re-save it from trusted code.") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)}); "
                              "it may be truncated or corrupt") from None
    return _unwrap(obj, path)


class _TorchSafetensors(MappingABC):
    """A safetensors file as ``{key: torch.Tensor}``, each tensor read when asked for (no memory
    map, so reading every tensor once does not leave the whole file in the resident set)."""

    def __init__(self, reader):
        self._reader = reader

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.from_numpy(self._reader[key])

    def __iter__(self):
        return iter(self._reader)

    def __len__(self) -> int:
        return len(self._reader)


def open_checkpoint(path: str | Path) -> MappingABC[str, torch.Tensor]:
    """Like ``load_checkpoint``, but a ``.safetensors`` file whose dtypes numpy holds is read a
    tensor at a time (``vit_porting/mapping/tensor_io.py``): for the toolkit's own 1.4 GB intermediates."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from vit_porting.mapping.tensor_io import SafetensorsReader

        try:
            reader = SafetensorsReader(path)
            for key in reader:
                reader.dtype(key)
            return _TorchSafetensors(reader)
        except CheckpointError:
            pass  # bfloat16 or a damaged file: load_checkpoint reads it or says what is wrong
    return load_checkpoint(path)


def perturb_(model: torch.nn.Module, seed: int, rules: Perturbation) -> None:
    """Make every branch of a freshly initialised model matter.

    timm initialises LayerScale gammas at 1e-5..1e-6, biases at zero and weights at std 0.02,
    so a port that got a whole branch wrong would still match, and every attention map would
    be nearly uniform (a transposed q/k would hardly show). So: the family's LayerScale gammas
    ~ U(0.1, 1), its query/key projections x5 (peaked attention), the q and k rows of its fused
    qkv projections rescaled so that attention logits have a std of about 3 whatever the width
    (``QKV_LOGIT_STD``), and its talking-heads mixing matrices ~ I + N(0, 1/heads) (``rules``,
    the family's ``Perturbation``); for every family,
    biases ~ N(0, 0.05), norm weights ~ 1 + N(0, 0.1), depthwise convolution kernels
    (C, 1, k, k) ~ N(0, 1/k^2), so that they pass the signal on at unit scale (at std 0.02 a
    3x3 depthwise projection all but silences its branch), and BatchNorm statistics:
    running_var ~ U(0.5, 1.5), running_mean ~ N(0, 0.1).
    """

    def matches(pattern: str | None, name: str) -> bool:
        return pattern is not None and re.search(pattern, name) is not None

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(param.shape, generator=generator)
            if matches(rules.layer_scale, name):
                param.copy_(torch.rand(param.shape, generator=generator) * 0.9 + 0.1)
            elif leaf == "bias":
                param.copy_(noise * 0.05)
            elif param.ndim == 1:  # norm weights
                param.copy_(1.0 + noise * 0.1)
            elif matches(rules.query_key, name):
                param.mul_(5.0)
            elif matches(rules.fused_qkv, name):
                # x5 on the whole fused matrix would scale v too, growing the residual stream block
                # after block, and its logits' std (width x weight variance) grows with the width:
                # a random deit_base_patch16_224's own fp32 rounding (fp32 vs fp64) reached 7e-4
                # on logits that way; q and k rows set for logits of std 3: 2.2e-6
                q_and_k = param[: 2 * param.shape[0] // 3]
                q_and_k.mul_((QKV_LOGIT_STD / param.shape[1]) ** 0.5 / q_and_k.std())
            elif matches(rules.head_mix, name):
                heads = param.shape[0]
                param.copy_(torch.eye(heads) + noise / heads**0.5)
            elif param.ndim == 4 and param.shape[1] == 1 and param.shape[2] * param.shape[3] > 1:
                param.copy_(noise / (param.shape[2] * param.shape[3]) ** 0.5)
        for name, buffer in model.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
            elif leaf == "running_mean":
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)


def class_labels(spec: VariantSpec) -> dict | None:
    """The class names of ``spec``'s head from timm's ``ImageNetInfo`` (WordNet synsets and their
    descriptions), or None when the head is not that label set's (another class count)."""
    if not spec.label_set or spec.config.num_classes <= 0:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo(spec.label_set)
    if info.num_classes() != spec.config.num_classes:
        return None
    return {"set": spec.label_set, "names": list(info.label_names()),
            "descriptions": list(info.label_descriptions())}


def _reset_classifier(state: dict[str, torch.Tensor], new_model, classifier: str | tuple[str, ...],
                      num_classes: int, origin: Origin, new_head: bool = False) -> dict[str, torch.Tensor]:
    """``state`` with its classifier(s) fitted to ``num_classes`` (a distilled DeiT has two heads:
    both are replaced or dropped together); ``new_model()`` builds the model whose freshly
    initialised heads replace them (only when needed)."""
    prefixes = (classifier,) if isinstance(classifier, str) else classifier
    classifier = prefixes[0]

    def is_head(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    head_keys = [k for k in state if is_head(k)]
    weight = state.get(f"{classifier}.weight")
    if weight is None or weight.shape[0] == num_classes:
        return state
    if not new_head:
        # A checkpoint fine-tuned to another class count must not get a random head silently.
        raise CheckpointError(
            f"{origin.description}: {classifier}.weight has shape {tuple(weight.shape)}, i.e. "
            f"{weight.shape[0]} classes, but the variant has {num_classes}. Pass --num-classes "
            f"{weight.shape[0]} to port this head, or --num-classes N to replace it with a "
            f"new N-class head for fine-tuning (0 for a feature extractor).")
    state = {k: v for k, v in state.items() if k not in head_keys}
    if num_classes > 0:
        state.update({k: v for k, v in new_model().state_dict().items() if is_head(k)})
        origin.notes.append(f"classifier replaced: checkpoint has {weight.shape[0]} classes, port has "
                            f"{num_classes}; the new head is randomly initialised (for fine-tuning)")
    else:
        origin.notes.append(f"classifier dropped ({weight.shape[0]} classes): feature-extractor port")
    return state


def choose_checkpoint_file(path: Path) -> tuple[Path, str | None]:
    """safetensors over pickle whenever both are there: a folder's ``*.safetensors``, or the
    ``.safetensors`` twin of a ``.pth``/``.bin`` file. Returns the file and a note if it switched."""
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) or sorted(
            p for suffix in PICKLE_SUFFIXES for p in path.glob(f"*{suffix}"))
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "no checkpoint files"
            raise CheckpointError(f"{path}: a folder must hold exactly one checkpoint to choose from "
                                  f"(found {found}); pass the file itself")
        return candidates[0], f"chose {candidates[0].name} in {path}"
    twin = path.with_suffix(".safetensors")
    if path.suffix in PICKLE_SUFFIXES and twin.is_file():
        return twin, f"{twin.name} used instead of {path.name}: safetensors cannot carry code"
    return path, None


def resolve_weights(spec: VariantSpec, weights: str, seed: int = 0,
                    new_head: bool = False) -> tuple[dict[str, torch.Tensor], Origin]:
    """Weights for ``spec`` in canonical layout, and where they came from.

    ``weights`` is ``"pretrained"``, ``"random"`` or a file path. The family's reference model
    is built for random weights, and for a new classifier head only when one is needed.
    """
    torch.manual_seed(seed)
    family = get_family(spec.family)
    reference = family.torch()
    if weights == "random":
        model = reference.build_reference(spec)
        perturb_(model, seed, family.perturbation)
        origin = Origin("random", f"random initialisation ({family.source_label} init, perturbed), seed {seed}",
                        seed=seed)
        # the model's own tensors, not copies: the model is dropped on return (1.4 GB for m48)
        return {k: v.detach() for k, v in model.state_dict().items()}, origin
    if weights == "pretrained":
        state, origin = reference.load_pretrained(spec)
    else:
        path, note = choose_checkpoint_file(Path(weights).expanduser())
        state = load_checkpoint(path)
        origin = Origin("file", str(path), file=str(path.resolve()), sha256=sha256_file(path))
        if note:
            origin.notes.append(note)
    state = to_canonical_layout(spec, state, origin)
    # the PyTorch model is built only if a new head is needed (seconds and GBs for cait_m48_448)
    return _reset_classifier(state, lambda: reference.build_reference(spec), family.classifier,
                             spec.config.num_classes, origin, new_head), origin


def to_canonical_layout(spec: VariantSpec, state: dict[str, torch.Tensor], origin: Origin) -> dict[str, torch.Tensor]:
    """Rename a checkpoint in one of the family's other key layouts into the canonical one.

    Each of the family's ``layouts`` has a ``detect`` regex (matched against the keys) and a
    declarative rename file (package data, see vit_porting.mapping.engine.RenameSpec).
    """
    family = get_family(spec.family)
    hits = [layout for layout in family.layouts if any(re.search(layout.detect, k) for k in state)]
    if not hits:
        return state
    if len(hits) > 1:
        raise CheckpointError(f"{origin.description}: keys match several {family.title} layouts "
                              f"({', '.join(h.name for h in hits)}); a checkpoint must be in one layout")
    (layout,) = hits
    try:
        state = family_renames(family, layout).apply(state)
    except (RenameError, MappingFileError) as exc:
        raise CheckpointError(f"{origin.description}: looks like the {layout.name} layout "
                              f"({layout.description}), but {exc}") from None
    origin.notes.append(f"{layout.name} key layout ({layout.description}) renamed into the canonical "
                        f"{family.source_label} layout by {family.package}/{layout.renames}")
    return state


def guess_family(shapes: MappingABC[str, tuple], exclude: str, image_size: int) -> dict | None:
    """The registered family (other than ``exclude``) a checkpoint belongs to, when its mapping
    (after the family's layout renames) takes most of the checkpoint's keys; else None.

    Returns {"family", "name", "matched", "total", "mapping", "variant"}: ``variant`` is the
    family's variant whose state_dict (built on the meta device) shares the most keys and shapes
    with the checkpoint, the nearest image size breaking ties. The one place that walks the
    registry of families to recognise a checkpoint.
    """
    best = None
    for name, family in families().items():
        if name == exclude:
            continue
        renames = [family_renames(family, layout) for layout in family.layouts
                   if any(re.search(layout.detect, key) for key in shapes)]
        mapping = family_mapping(family)
        canonical = {}
        for key, shape in shapes.items():
            for rename in renames:
                key = rename.rename_key(key)
            canonical[key] = tuple(shape)
        matched = sum(mapping.accounts_for(key) for key in canonical)
        if best is None or matched > best["matched"]:
            best = {"family": name, "name": family.title, "matched": matched, "total": len(shapes),
                    "mapping": family.mapping,
                    "keys": {mapping.rename_key(k): v for k, v in canonical.items()}}
    if best is None or 2 * best["matched"] <= best["total"]:
        return None
    keys = best.pop("keys")
    family = get_family(best["family"])
    build = family.torch().build_reference

    def fit(spec: VariantSpec) -> tuple[float, int]:
        with torch.device("meta"):
            reference = {k: tuple(v.shape) for k, v in build(spec).state_dict().items()}
        same = sum(reference.get(k) == shape for k, shape in keys.items())
        return same / len(set(reference) | set(keys)), -abs(spec.image_size - image_size)

    best["variant"] = max(family.variants, key=fit).name
    return best


def refuse_other_family(spec: VariantSpec, state: MappingABC[str, torch.Tensor], mapping, origin: Origin) -> None:
    """A checkpoint of another family fails on every key, which the mapping engine would list
    by the dozen; when most of its keys fit another registered family, say that in one line."""
    if not state or 2 * sum(mapping.accounts_for(key) for key in state) > len(state):
        return
    guess = guess_family({k: tuple(v.shape) for k, v in state.items()}, spec.family, spec.image_size)
    if guess:
        raise CheckpointError(
            f"{origin.description}: this looks like a {guess['name']} checkpoint ({guess['matched']} of "
            f"{guess['total']} keys match {guess['mapping']}), not {spec.name}; did you mean "
            f"{guess['variant']} (vit-port port {guess['variant']})?")


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
