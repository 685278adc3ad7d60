"""Compare runtime outputs against the reference under the tolerance policy.

numpy only: the comparison runs in the orchestrating process, which loads no framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

POLICY_PATH = Path(__file__).with_name("tolerances.yaml")


def output_kind(name: str) -> str:
    """Which policy row an output falls under."""
    if name.endswith("_attn"):
        return "attention"
    if name in ("logits", "features"):
        return name
    return "hidden"  # block outputs (*_out) and other intermediate tensors such as a class token


def load_policy(path: Path | str = POLICY_PATH) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def tolerance(policy: dict, device: str, name: str) -> float:
    row = policy["gpu" if device.startswith(("cuda", "gpu")) else "cpu"]
    return float(row[output_kind(name)]["max_normalized_diff"])


@dataclass
class OutputComparison:
    output: str
    kind: str
    shape: list[int]
    max_abs_diff: float
    reference_scale: float
    max_normalized_diff: float
    tolerance: float
    passed: bool
    top1_agreement: float | None = None
    top5_agreement: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _topk(x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-x, axis=-1)[..., :k]


def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], device: str = "cpu",
                    policy: dict | None = None) -> list[OutputComparison]:
    """One comparison per reference output; a missing or misshaped output fails outright.

    Values are read one output at a time (the mappings may be memory-mapped stores)."""
    policy = policy or load_policy()
    results = []
    for name in reference:
        ref = np.asarray(reference[name])
        tol = tolerance(policy, device, name)
        ref64 = ref.astype(np.float64)
        scale = float(np.abs(ref64).max()) or 1.0
        cand = candidate.get(name)
        if cand is None or cand.shape != ref.shape:
            results.append(OutputComparison(name, output_kind(name), list(ref.shape), float("inf"), scale,
                                            float("inf"), tol, False))
            continue
        diff = np.abs(cand.astype(np.float64) - ref64)
        max_abs = float(diff.max()) if diff.size else 0.0
        if not np.isfinite(cand).all():
            max_abs = float("inf")
        comparison = OutputComparison(name, output_kind(name), list(ref.shape), max_abs, scale,
                                      max_abs / scale, tol, bool(max_abs / scale <= tol))
        if name == "logits":
            comparison.top1_agreement = float((ref.argmax(-1) == cand.argmax(-1)).mean())
            k = min(5, ref.shape[-1])
            ref5, cand5 = _topk(ref, k), _topk(cand, k)
            comparison.top5_agreement = float(np.mean([set(a) == set(b) for a, b in zip(ref5, cand5, strict=True)]))
        results.append(comparison)
    return results


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """How a reduced-precision head output agrees with the fp32 reference's: top-1 and top-5
    agreement, max and mean |Δ| of the softmax probabilities, and the fp32 parity metric
    (max |Δ| / max |reference|) for comparison with the fp32 tolerance. Logits only: a
    feature extractor's features have no classes, so only the parity metric is given."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if cand.shape != ref.shape or not np.isfinite(cand).all():
        return {"count": int(ref.shape[0]), "valid": False}
    result = {"count": int(ref.shape[0]), "valid": True,
              "max_normalized_diff": float(np.abs(cand - ref).max() / (np.abs(ref).max() or 1.0))}
    if ref.ndim == 2 and ref.shape[-1] > 1:
        k = min(5, ref.shape[-1])
        delta = np.abs(_softmax(cand) - _softmax(ref))
        result.update(top1_agreement=float((ref.argmax(-1) == cand.argmax(-1)).mean()),
                      top5_agreement=float(np.mean([set(a) == set(b) for a, b in
                                                    zip(_topk(ref, k), _topk(cand, k), strict=True)])),
                      prob_max_abs_diff=float(delta.max()), prob_mean_abs_diff=float(delta.mean()))
    return result


def meets_floor(row: dict, floor: dict) -> bool:
    """Whether a variant's agreement reaches every bound of ``floor`` ({"photos": {"top1_agreement": 0.99}}:
    a measure of one input set at least this); a measure it lacks fails."""
    for inputs, bounds in floor.items():
        measured = row.get(inputs) or {}
        for measure, bound in bounds.items():
            if measured.get(measure) is None or measured[measure] < bound:
                return False
    return True


def first_divergent_block(comparisons: list[OutputComparison], order: list[str]) -> str | None:
    """The block of the earliest per-block output (attention map or block output, in model
    order) that is out of tolerance: the blocks after it fail because their input is wrong.
    """
    failing = {c.output for c in comparisons if not c.passed}
    for name in order:
        if name in failing and name.endswith(("_attn", "_out")):
            return name.rsplit("_", 1)[0]
    return None
