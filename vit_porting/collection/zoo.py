"""The zoo as CI sees it: every registered variant, as the JSON matrix of the parity workflow.

``python -m vit_porting.collection.zoo`` prints ``{"include": [{"variant": ..., "family": ...}, ...]}``, which
``.github/workflows/zoo-parity.yml`` feeds to ``strategy.matrix`` with ``fromJSON``: a family added
to the registry (its line in ``BUILTIN``) is in the nightly parity run without a workflow edit.

Standard library only, like the registry it reads: the workflow's first job runs it on a bare
Python, before any framework is installed.
"""

from __future__ import annotations

import json
import sys

from vit_porting.families.registry import all_variants


def zoo_matrix() -> dict:
    """The GitHub Actions matrix of every registered variant, sorted by name."""
    return {"include": [{"variant": name, "family": spec.family} for name, spec in sorted(all_variants().items())]}


def main() -> int:
    json.dump(zoo_matrix(), sys.stdout, separators=(",", ":"))
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
