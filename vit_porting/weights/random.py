"""``WEIGHTS=random``: timm's random init, perturbed so that every branch of the model matters."""

from __future__ import annotations

import re

import torch

from vit_porting.families.base import Perturbation

QKV_LOGIT_STD = 3.0  # attention logits of perturbed fused qkv weights: peaked (mean max probability ~0.35)


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
