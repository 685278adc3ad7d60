"""Real photographs for parity: scikit-image's bundled sample images, preprocessed once.

Random N(0, 1) inputs test every number; photographs test what a user sees (top-1/top-5).
The photographs ship inside the scikit-image wheel (``skimage/data/*.png|jpg``), so no
download is needed. numpy only here (plus scikit-image for the photographs, PIL to resize): the
orchestrator prepares them and every runtime process reads the same array.

Every runtime process runs its inputs through ``vit_porting.parity.outputs.run_on_inputs``: the seeded
random batch with all outputs, and the photographs with the head output only (at 448 px an
m48 attention stack is 1.9 GB per image, so maps of photographs are not kept).

Preprocessing is implemented once, here, in numpy + PIL, and reproduces timm's evaluation
transform (``timm.data.create_transform(**resolve_data_config(...))``: resize with PIL, centre
crop, ToTensor, Normalize) step for step: ``resize_and_crop`` gives the uint8 pixels the model
sees, ``normalize`` the float32 input. The parity photographs, ``vit-port eval`` and
``vit-port attention`` all go through it (tests/test_evaluate.py checks it against timm).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# RGB photographs bundled with scikit-image (skimage.data); grey and synthetic images left out.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def resolve_preprocessing(preprocessing: dict, image_size: int | None = None) -> dict:
    """A variant's preprocessing dict with every field the transform reads filled in.

    ``crop_mode`` (timm's names): ``center`` resizes the short side to
    ``floor(input_size / crop_pct)`` keeping the aspect ratio, then centre-crops; ``squash``
    resizes both sides to that size (aspect ratio not kept), then centre-crops.
    """
    pre = dict(preprocessing or {})
    size = int(pre.get("input_size") or image_size or 224)
    crop_pct = float(pre.get("crop_pct") or 1.0)
    return {"input_size": size, "crop_pct": crop_pct, "crop_mode": pre.get("crop_mode", "center"),
            "interpolation": pre.get("interpolation", "bicubic"),
            "mean": [float(v) for v in pre.get("mean", (0.485, 0.456, 0.406))],
            "std": [float(v) for v in pre.get("std", (0.229, 0.224, 0.225))],
            "scale_size": math.floor(size / crop_pct)}


def to_pil_rgb(image):
    """A PIL RGB image from a PIL image, a uint8 HWC/HW array, or an image file path."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as handle:
            return handle.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array[..., :3] if array.ndim == 3 else array).convert("RGB")


def resize_and_crop(image, preprocessing: dict) -> np.ndarray:
    """uint8 (size, size, 3): timm's eval geometry (torchvision ``Resize`` on a PIL image, then
    ``CenterCrop``), with the same size arithmetic, so the pixels are PIL's own."""
    pre = resolve_preprocessing(preprocessing)
    img = to_pil_rgb(image)
    size, scale = pre["input_size"], pre["scale_size"]
    w, h = img.size
    if pre["crop_mode"] == "squash":
        new_w = new_h = scale
    elif pre["crop_mode"] == "center":
        # torchvision.transforms.functional._compute_resized_output_size (size = short side)
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = scale, int(scale * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        raise ValueError(f"crop_mode {pre['crop_mode']!r} is not supported (center, squash)")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), _PIL_FILTERS[pre["interpolation"]])
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    if top < 0 or left < 0:
        raise ValueError(f"image {w}x{h} resized to {new_w}x{new_h} is smaller than the {size} px crop")
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalize(pixels: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (x / 255 - mean) / std, in float32 like ToTensor + Normalize."""
    x = np.asarray(pixels).astype(np.float32) / np.float32(255.0)
    return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def preprocess_image(image, preprocessing: dict) -> np.ndarray:
    """float32 (size, size, 3) NHWC-ready input: ``resize_and_crop`` then ``normalize``."""
    pre = resolve_preprocessing(preprocessing)
    return normalize(resize_and_crop(image, pre), pre["mean"], pre["std"])


def preprocess(image: np.ndarray, size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC: centre square crop (crop_pct 1.0 of the short side),
    bicubic resize to ``size`` (PIL, antialiased), scale to [0, 1], mean/std."""
    return preprocess_image(image, {"input_size": size, "crop_pct": 1.0, "interpolation": "bicubic",
                                    "mean": mean, "std": std})


def sample_photos(size: int, mean: list[float] | None = None, std: list[float] | None = None,
                  names: tuple[str, ...] = PHOTOS) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 3) float32 NHWC photographs (centre square crop, bicubic), and their names."""
    import skimage.data

    mean = mean or [0.485, 0.456, 0.406]
    std = std or [0.229, 0.224, 0.225]
    photos = [preprocess(getattr(skimage.data, name)(), size, mean, std) for name in names]
    return np.stack(photos), list(names)


def write_parity_inputs(path: Path | str, images: np.ndarray, photos: np.ndarray | None,
                        photo_names: list[str] | None = None) -> None:
    arrays = {"images": images}
    if photos is not None:
        arrays.update(photos=photos, photo_names=np.asarray(photo_names or []))
    np.savez(path, **arrays)
