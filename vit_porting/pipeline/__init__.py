"""The port and the re-check, each a list of steps run in per-runtime worker processes
(``port.py``, ``recheck.py``; the steps they share in ``runtimes.py``, the step machinery in ``steps.py``)."""

from vit_porting.pipeline.options import DEFAULT_ARTIFACTS, PortError, PortOptions, parse_backends
from vit_porting.pipeline.port import port
from vit_porting.pipeline.recheck import recheck

__all__ = ["DEFAULT_ARTIFACTS", "PortError", "PortOptions", "parse_backends", "port", "recheck"]
