"""Full-size ports of the big variants, every export and runtime (`make test-all`; not in `make test`).

cait_m48_448 runs at batch 1: the 50 attention maps of one 448 px image are already 1.9 GB.
"""

from __future__ import annotations

import pytest

from vit_porting.families.registry import get_variant
from vit_porting.manifest import verify_manifest
from vit_porting.pipeline import PortOptions, port

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name, batch", [("cait_s24_384", 2), ("cvt-13-384", 2), ("cait_m48_448", 1),
                                         ("vit_large_patch16_224", 2), ("deit3_huge_patch14_224", 2)])
def test_full_size_port_passes_everywhere(tmp_path, name, batch):
    report = port(get_variant(name), PortOptions(weights="random", out_root=tmp_path, batch=batch,
                                                 log=lambda _m: None))
    failing = {r["runtime"]: r["failing_outputs"] for r in report["runtimes"] if not r["passed"]}
    assert report["passed"], failing
    assert {r["runtime"] for r in report["runtimes"]} >= {"keras_eager", "keras_compiled", "keras_file",
                                                          "savedmodel", "onnxruntime"}
    assert report["roundtrip"]["bit_exact"]
    assert verify_manifest(tmp_path / name) == []
