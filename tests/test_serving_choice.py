"""The pieces that decide what a port serves and publishes, without a port: the timing chooser's
preference order, the agreement measures of reduced-precision files, the publish floor."""

from __future__ import annotations

import numpy as np
import pytest

from vit_porting.export import timing
from vit_porting.export.timing import choose_fastest, pick
from vit_porting.parity.compare import agreement, meets_floor
from vit_porting.publish.forms import withheld_files


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


class FakeClock:
    """``time.perf_counter`` for the chooser: a candidate's call advances it by that candidate's cost
    at that batch size, so a test decides every measured time and the calls' order is recorded."""

    def __init__(self, cost: dict[str, dict[int, float]]):
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self) -> float:
        return self.now

    def candidate(self, name: str):
        def run(images):
            self.calls.append((name, len(images)))
            self.now += self.cost[name][len(images)]
        return run


def _choose(monkeypatch, cost, margin=0.03, budget_s=1000.0):
    clock = FakeClock(cost)
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    batches = [np.zeros((1, 2)), np.zeros((8, 2))]
    return choose_fastest({n: clock.candidate(n) for n in cost}, batches, warmup=1, repeats=3, margin=margin,
                          budget_s=budget_s), clock


def test_chooser_scores_the_geometric_mean_over_batches(monkeypatch):
    # twice as fast at batch 1, twice as slow at batch 8: even, so the preferred (first) one stays
    even, _ = _choose(monkeypatch, {"tf.function": {1: 1.0, 8: 4.0}, "xla": {1: 0.5, 8: 8.0}})
    assert even["chosen"] == "tf.function" and even["relative_time"]["xla"] == pytest.approx(1.0)
    assert even["median_ms"] == {"1": {"tf.function": 1000.0, "xla": 500.0}, "8": {"tf.function": 4000.0,
                                                                                   "xla": 8000.0}}
    faster, _ = _choose(monkeypatch, {"tf.function": {1: 1.0, 8: 4.0}, "xla": {1: 0.5, 8: 2.0}})
    assert faster["chosen"] == "xla" and faster["relative_time"]["xla"] == pytest.approx(0.5)


def test_chooser_keeps_the_preferred_graph_within_the_margin(monkeypatch):
    close = {"tf.function": {1: 1.0, 8: 4.0}, "xla": {1: 0.98, 8: 3.92}}  # 2 % faster
    assert _choose(monkeypatch, close, margin=0.03)[0]["chosen"] == "tf.function"
    assert _choose(monkeypatch, close, margin=0.0)[0]["chosen"] == "xla"


def test_chooser_alternates_candidates_and_skips_a_batch_past_its_budget(monkeypatch):
    cost = {"a": {1: 1.0, 8: 8.0}, "b": {1: 2.0, 8: 16.0}}
    result, clock = _choose(monkeypatch, cost, budget_s=100.0)
    # warm-up of each, then one timed call of each in turn (a burst of load falls on both)
    assert clock.calls[:8] == [("a", 1), ("b", 1), ("a", 1), ("b", 1), ("a", 1), ("b", 1), ("a", 1), ("b", 1)]
    # batch 8 would take 1 s x 8 images x 4 calls x 2 candidates = 64 s: within 100 s, timed
    assert sorted(result["median_ms"]) == ["1", "8"] and result["chosen"] == "a"
    skipped, clock = _choose(monkeypatch, cost, budget_s=60.0)
    assert list(skipped["median_ms"]) == ["1"] and {b for _, b in clock.calls} == {1}


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
    # a variant file in the folder that the report never measured has shown nothing: withheld when trained
    unmeasured = withheld_files({"random_weights": random_weights, "variants": rows},
                                ["model.onnx", "model_int8.onnx", "model_fp16.onnx", "model_int8.tflite"])
    assert set(unmeasured) == (expected | {"model_int8.tflite"} if not random_weights else set())
