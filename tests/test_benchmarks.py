"""The benchmarks report a peer that cannot convert a model by one line that names the cause."""

from __future__ import annotations

from benchmarks.peers import _one_line
from vit_porting.workers.protocol import WorkerError

# the last lines of nobuco 0.17's stderr converting cvt-13-224 (2026-12-03), as run_worker keeps them
KERAS_LAYER_ERROR = """\
  File "nobuco/node_converters/linear.py", line 102, in <lambda>
    return keras.layers.Lambda(lambda operands: tf.einsum(equation, *operands))(operands)
                                                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
AttributeError: Exception encountered when calling layer "lambda_1" (type Lambda).

'list' object has no attribute 'shape'

Call arguments received by layer "lambda_1" (type Lambda):
  \u2022 inputs=(['tf.Tensor(shape=(None, 1, 3136, 64), dtype=float32)'],)
  \u2022 mask=None
  \u2022 training=None
"""


def test_a_keras_layer_error_is_reported_with_its_cause():
    line = _one_line(WorkerError("benchmarks.nobuco_peer", "convert", KERAS_LAYER_ERROR, False))
    assert line.startswith('AttributeError: Exception encountered when calling layer "lambda_1"')
    assert line.endswith("'list' object has no attribute 'shape'")


def test_the_last_exception_line_wins_and_a_message_without_one_keeps_its_last_line():
    chained = "ValueError: first\n\nDuring handling of the above exception\nRuntimeError: second\n  detail"
    assert _one_line(WorkerError("m", "j", chained, False)) == "RuntimeError: second"
    assert _one_line(WorkerError("m", "j", "worker died\nkilled by signal 9", False)) == "killed by signal 9"
