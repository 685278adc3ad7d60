"""The pieces that decide what a port serves and publishes, without a port: the timing chooser's
preference order, the agreement measures of reduced-precision files, the publish floor."""

from __future__ import annotations

import numpy as np
import pytest

from parity.compare import agreement, meets_floor
from parity.timing import choose_fastest, pick
from porting.layout import withheld_files


def test_a_less_preferred_graph_must_win_by_the_margin():
    order = ["exported", "rewritten", "ort_fused"]
    assert pick({"exported": 1.0, "rewritten": 0.98, "ort_fused": 0.99}, order, 0.03) == "exported"
    assert pick({"exported": 1.0, "rewritten": 0.9, "ort_fused": 0.88}, order, 0.03) == "rewritten"
    assert pick({"exported": 1.0, "rewritten": 0.9, "ort_fused": 0.5}, order, 0.03) == "ort_fused"
    assert pick({"exported": 1.0, "rewritten": 0.5}, ["rewritten"], 0.03) == "rewritten"  # only one passed


def test_choose_fastest_times_only_the_first_batch_past_its_budget():
    calls: dict[str, list[int]] = {"a": [], "b": []}

    def fn(name):
        return lambda images: calls[name].append(len(images))

    result = choose_fastest({n: fn(n) for n in calls}, [np.zeros((1, 2)), np.zeros((8, 2))], warmup=1, repeats=3,
                            budget_s=0.0)
    assert list(result["median_ms"]) == ["1"] and calls == {"a": [1] * 4, "b": [1] * 4}
    assert result["chosen"] in calls and result["relative_time"]["a"] == 1.0


def test_agreement_counts_top1_top5_and_probability_differences():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4, 10))
    same = agreement(reference, reference.copy())
    assert same["top1_agreement"] == same["top5_agreement"] == 1.0 and same["prob_max_abs_diff"] == 0.0
    swapped = reference.copy()
    top = reference[0].argmax()
    swapped[0, top] = reference[0].min() - 1  # image 0's best class drops out of its top 5
    moved = agreement(reference, swapped)
    assert moved["top1_agreement"] == 0.75 and moved["top5_agreement"] == 0.75 and moved["prob_max_abs_diff"] > 0
    assert agreement(reference, np.full_like(reference, np.nan))["valid"] is False


@pytest.mark.parametrize("random_weights, expected", [(False, {"model_int8.onnx"}), (True, set())])
def test_files_below_the_floor_are_withheld_from_a_trained_port(random_weights, expected):
    floor = {"photos": {"top1_agreement": 0.99}}
    rows = [{"variant": v, "file": f, "photos": {"top1_agreement": a}, "publish_floor": floor,
             "meets_publish_floor": meets_floor({"photos": {"top1_agreement": a}}, floor)}
            for v, f, a in (("onnx_int8", "model_int8.onnx", 0.97), ("onnx_fp16", "model_fp16.onnx", 1.0))]
    assert [r["meets_publish_floor"] for r in rows] == [False, True]
    assert set(withheld_files({"random_weights": random_weights, "variants": rows})) == expected
    assert not meets_floor({}, floor)  # a measure it lacks fails
