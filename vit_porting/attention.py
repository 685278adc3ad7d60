"""``vit-port attention``: class-attention maps, a saliency map and attention rollout over one image, as a PNG.

Which outputs are drawn is the family's answer (``Family.class_attention``): maps whose
query 0 is the class token and whose keys are [prefix tokens, patches]. The map of a head is
row 0 without the prefix tokens (the class token itself, a distillation token), reshaped to the
square key grid: for CaiT each class-attention block, (B, heads, 1, 1 + N); for CvT the last
stage's blocks, (B, heads, 1 + Nq, 1 + Nkv), read on the key/value grid (stride 2: a 14x14 stage
on 7x7); for a plain ViT the last block, (B, heads, N, N).

The saliency map is the head average of the last block drawn: the attention the classifier's
token paid last. Where every block attends over the same tokens (``Family.rollout``), the
picture adds attention rollout (Abnar & Zuidema 2020): each block's head-averaged map with the
identity added for the residual connection, rows renormalised, multiplied from the first block
to the last and read at the class token, i.e. how much of each patch reaches the class token
through all the blocks. Every map is drawn upsampled (bilinear) over the image, each normalised
to its own [0, 1] range.

The model runs in a worker process (``vit_porting.workers.run_eval`` job ``attention``: model.keras, or
saved_model/ with ``source="savedmodel"``); this process draws with matplotlib (Agg) and
imports no framework. ``attention_figure`` returns the arrays it drew and a description of
every panel, so tests can compare them with the model's outputs.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vit_porting.evaluate import EvalError, load_record, spec_preprocessing
from vit_porting.families.base import VariantSpec
from vit_porting.families.registry import get_family
from vit_porting.parity.images import preprocess_image, resize_and_crop
from vit_porting.safety import make_scratch
from vit_porting.workers.protocol import run_worker

SOURCES = {"keras": "model.keras", "savedmodel": "saved_model"}


def _grid(tokens: int, name: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise EvalError(f"{name}: {tokens} tokens do not form a square grid")
    return side


def class_attention_maps(spec: VariantSpec, outputs: dict[str, np.ndarray], blocks: str = "default",
                         index: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """{output name: (heads, g, g) class-token attention of image ``index``}, and the output
    whose head average is the saliency map. ``blocks``: "default" (every block the family
    names, or its last one where the family says so) or "all"."""
    view = get_family(spec.family).presentation.class_attention(spec)
    if view is None:
        raise EvalError(f"the {get_family(spec.family).title} family names no class-attention outputs to draw")
    pattern = re.compile(view.outputs)
    names = sorted((k for k in outputs if pattern.fullmatch(k)), key=lambda k: int(pattern.fullmatch(k)[1]))
    if view.last_only and blocks != "all":
        names = names[-1:]
    if not names:
        raise EvalError(f"the model has no class-attention outputs ({', '.join(sorted(outputs)[:6])} ...)")
    maps = {}
    for name in names:
        attn = np.asarray(outputs[name])[index]  # (heads, queries, keys)
        row = attn[:, 0, view.prefix_tokens:]  # the class token's query, patches only
        side = _grid(row.shape[-1], name)
        maps[name] = row.reshape(row.shape[0], side, side).astype(np.float32)
    return maps, names[-1]


def attention_rollout(spec: VariantSpec, outputs: dict[str, np.ndarray],
                      index: int = 0) -> tuple[np.ndarray, list[str]] | None:
    """Attention rollout of image ``index`` read at the class token, (g, g) over the patches, and
    the maps it multiplied (first block first); None where the family says rollout does not apply.

    Per block: A = head mean + I (the residual path), rows renormalised to sum to 1; the rollout
    is A_L ... A_2 A_1, computed in float64."""
    view = get_family(spec.family).presentation.rollout(spec)
    if view is None:
        return None
    pattern = re.compile(view.outputs)
    names = sorted((k for k in outputs if pattern.fullmatch(k)), key=lambda k: int(pattern.fullmatch(k)[1]))
    if not names:
        raise EvalError(f"the model has no outputs for attention rollout ({', '.join(sorted(outputs)[:6])} ...)")
    rollout = None
    for name in names:
        attn = np.asarray(outputs[name])[index].astype(np.float64).mean(axis=0)  # (N, N)
        if attn.shape[0] != attn.shape[1] or (rollout is not None and attn.shape != rollout.shape):
            raise EvalError(f"{name}: attention of shape {attn.shape} cannot be multiplied into a rollout "
                            "(it needs square maps over the same tokens in every block)")
        mixed = attn + np.eye(attn.shape[0])
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed if rollout is None else mixed @ rollout
    row = rollout[0, view.prefix_tokens:]
    side = _grid(row.shape[-1], names[-1])
    return row.reshape(side, side).astype(np.float32), names


def _upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    """(g, g) -> (size, size), bilinear (PIL, float), then scaled to [0, 1] for display."""
    from PIL import Image

    up = np.asarray(Image.fromarray(grid_map.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


def draw(pixels: np.ndarray, maps: dict[str, np.ndarray], saliency: np.ndarray, out: Path | str, title: str,
         dpi: int = 60, rollout: np.ndarray | None = None) -> list[dict]:
    """The PNG: row 0 the input, the saliency map and the rollout (if any); one row per block, one
    panel per head. Returns one entry per panel:
    {"kind": "input" | "saliency" | "rollout" | "head", "block", "head", "row", "col"}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = pixels.shape[0]
    heads = max(m.shape[0] for m in maps.values())
    cols = max(2 if rollout is None else 3, heads)
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    panels = []

    def show(ax, overlay, label):
        ax.imshow(pixels)
        if overlay is not None:
            ax.imshow(_upsample(overlay, size), cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0)
        ax.set_title(label, fontsize=8)

    show(axes[0, 0], None, "input")
    panels.append({"kind": "input", "block": None, "head": None, "row": 0, "col": 0})
    show(axes[0, 1], saliency, "saliency (head mean)")
    panels.append({"kind": "saliency", "block": None, "head": None, "row": 0, "col": 1})
    if rollout is not None:
        show(axes[0, 2], rollout, "attention rollout")
        panels.append({"kind": "rollout", "block": None, "head": None, "row": 0, "col": 2})
    for r, (name, per_head) in enumerate(maps.items(), start=1):
        for h in range(per_head.shape[0]):
            show(axes[r, h], per_head[h], f"{name.removesuffix('_attn')} h{h}")
            panels.append({"kind": "head", "block": name, "head": h, "row": r, "col": h})
    # wrapped to the figure's width (about 14 characters of 9 pt text per inch)
    fig.suptitle("\n".join(textwrap.fill(line, int(1.9 * cols * 14)) for line in title.splitlines()), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return panels


def attention_figure(folder: Path | str, image: Path | str, out: Path | str | None = None, source: str = "keras",
                     blocks: str = "default", dpi: int = 60, title: str | None = None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Run the artifact of ``folder`` (``source``: keras or savedmodel) on ``image`` and draw
    the PNG (default ``<folder>/eval/attention_<image stem>.png``).

    Returns {"png", "panels", "maps" (output -> (heads, g, g)), "saliency" (g, g),
    "saliency_block", "rollout" ((g, g), or None), "rollout_blocks" (the maps it multiplied),
    "outputs" (every model output on the image), "input" (the float32 preprocessed image),
    "pixels" (its uint8 form), "top5", "top5_names"}."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    folder = Path(folder)
    record = load_record(folder)
    spec, origin = record.spec, record.origin
    if source not in SOURCES:
        raise EvalError(f"unknown source {source!r}; choose keras or savedmodel")
    model_path = folder / SOURCES[source]
    if not model_path.exists():
        raise EvalError(f"{model_path}: missing; port with exports first")
    if not Path(image).is_file():
        raise EvalError(f"{image}: no such image")
    if out is not None and (Path(out).exists() or Path(out).is_symlink()):  # the user's file, not ours to replace
        raise EvalError(f"{out}: exists; --png does not overwrite files: choose another name or remove it")
    pre = spec_preprocessing(spec)
    pixels = resize_and_crop(image, pre)
    inputs = preprocess_image(image, pre)[None]
    work = make_scratch(folder.parent, f"{folder.name}.attention")
    try:
        np.save(work / "image.npy", inputs)
        run_worker("eval", {"job": "attention", "source": source, "spec": spec.to_dict(),
                                       "model": str(model_path), "image": str(work / "image.npy"),
                                       "out": str(work / "outputs.npz")}, work)
        with np.load(work / "outputs.npz") as data:
            outputs = {k: data[k] for k in data.files}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    maps, last = class_attention_maps(spec, outputs, blocks)
    saliency = maps[last].mean(axis=0)
    rollout, rollout_blocks = attention_rollout(spec, outputs) or (None, [])
    head = next((k for k in ("logits", "features") if k in outputs), None)
    top5 = [int(i) for i in np.argsort(-outputs[head][0])[:5]] if head == "logits" else []
    if title is None:
        family = get_family(spec.family)
        weights = ("RANDOM weights: the maps show the machinery, not what a trained model looks at"
                   if origin.get("random_weights") else f"weights: {origin.get('description', 'unknown')}")
        shown = family.presentation
        rolled = (f"; {shown.rollout(spec).title} = product of the head-mean maps (+ identity) of "
                  f"{len(rollout_blocks)} blocks, read at the class token" if rollout_blocks else "")
        title = (f"{spec.name} ({weights})\n{SOURCES[source]}: {shown.class_attention(spec).title}, each head; "
                 f"saliency = head mean of {last.removesuffix('_attn')}{rolled}"
                 + (f"; top-1 class {top5[0]} ({record.label(top5[0])})" if top5 else ""))
    if out is None:
        out = folder / "eval" / f"attention_{Path(image).stem}.png"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    panels = draw(pixels, maps, saliency, out, title, dpi, rollout)
    log(f"Wrote {out} ({len(panels)} panels)")
    return {"png": str(out), "panels": panels, "maps": maps, "saliency": saliency, "saliency_block": last,
            "rollout": rollout, "rollout_blocks": rollout_blocks, "outputs": outputs, "input": inputs[0],
            "pixels": pixels, "top5": top5, "top5_names": [record.label(i) for i in top5], "source": source}
