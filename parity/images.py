"""Real photographs for parity: scikit-image's bundled sample images, preprocessed once.

Random N(0, 1) inputs test every number; photographs test what a user sees (top-1/top-5).
The photographs ship inside the scikit-image wheel (``skimage/data/*.png|jpg``), so no
download is needed. numpy only here (plus scikit-image for decoding and resizing): the
orchestrator prepares them and every runtime process reads the same array.

Every runtime process runs its inputs through ``run_on_inputs``: the seeded random batch
with all outputs, and the photographs one at a time keeping only the head output (at
448 px an m48 attention stack is 1.9 GB per image, so maps of photographs are not kept).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

# RGB photographs bundled with scikit-image (skimage.data); grey and synthetic images left out.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
PHOTO_PREFIX = "photos:"


def preprocess(image: np.ndarray, size: int, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 HWC RGB -> float32 HWC: centre square crop (crop_pct 1.0 of the short side),
    bicubic resize to ``size`` with antialiasing, scale to [0, 1], ImageNet mean/std."""
    from skimage.transform import resize

    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    image = image[..., :3]
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side].astype(np.float64) / 255.0
    image = resize(image, (size, size), order=3, anti_aliasing=True, mode="reflect")
    image = (np.clip(image, 0.0, 1.0) - np.asarray(mean)) / np.asarray(std)
    return image.astype(np.float32)


def sample_photos(size: int, mean: list[float] | None = None, std: list[float] | None = None,
                  names: tuple[str, ...] = PHOTOS) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 3) float32 NHWC photographs, and their names."""
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


def read_photos(path: Path | str) -> np.ndarray | None:
    with np.load(path) as data:
        return data["photos"] if "photos" in data.files else None


def run_on_inputs(run: Callable[[np.ndarray], dict[str, np.ndarray]], inputs_path: Path | str,
                  head: str) -> dict[str, np.ndarray]:
    """All outputs of ``run`` on the random batch, plus ``photos:<head>`` on the photographs."""
    with np.load(inputs_path) as data:
        images = data["images"]
        photos = data["photos"] if "photos" in data.files else None
    outputs = dict(run(images))
    if photos is not None and len(photos):
        heads = [np.asarray(run(photos[i:i + 1])[head]) for i in range(len(photos))]
        outputs[PHOTO_PREFIX + head] = np.concatenate(heads)
    return outputs


def split_photo_outputs(outputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(outputs on the random batch, head outputs on the photographs keyed by head name)."""
    main = {k: v for k, v in outputs.items() if not k.startswith(PHOTO_PREFIX)}
    photos = {k[len(PHOTO_PREFIX):]: v for k, v in outputs.items() if k.startswith(PHOTO_PREFIX)}
    return main, photos
