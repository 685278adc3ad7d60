"""Publish a collection: every verified variant through ``vit_porting.publish.upload``, and the collection card.

Targets: ``hf://owner`` (each variant as ``publish`` puts it: ``hf://owner/<variant>`` and its
``-savedmodel``, ``-onnx``, ``-pytorch`` repositories; the card in ``hf://owner/<family>-collection``)
or ``kaggle://owner`` (one Kaggle model per family, a variation per variant in each form's
framework slot: ``kaggle://owner/<family>/<variant>``; Kaggle has no API for a model's
description, so the card is staged for pasting there).

Thin on purpose: staging, refusals and uploads are ``vit_porting.publish.upload``'s (``publish``), per variant;
this module only derives the per-variant targets, refuses a variant that has no verified folder
or failed parity, and renders the collection card with links to the targets.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vit_porting.collection.report import CARD_NAME, COLLECTION_JSON, collection_dir, render_collection_card
from vit_porting.manifest import verify_manifest
from vit_porting.publish.upload import STAGING, PublishError, Staged, publish
from vit_porting.publish.upload import _slug as kaggle_slug
from vit_porting.safety import STAGING_MARKER, write_text_atomic

_OWNER = re.compile(r"^(hf|kaggle)://([A-Za-z0-9][A-Za-z0-9._-]*)/?$")


@dataclass
class CollectionStaged:
    folder: Path  # the collection's staging folder: one folder per variant, and the card
    staged: dict[str, Staged] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # variant -> why it is not published


def variant_target(kind: str, owner: str, family: str, variant: str) -> str:
    return f"hf://{owner}/{variant}" if kind == "hf" else f"kaggle://{owner}/{family}/{kaggle_slug(variant)}"


def _link(kind: str, owner: str, family: str) -> Callable[[str], str]:
    """Where a reader of the card goes for a variant: its Keras repository (the others are linked
    from its card), or its Kaggle model, whose page lists the variation in every framework."""
    if kind == "hf":
        return lambda variant: f"https://huggingface.co/{owner}/{variant}"
    return lambda variant: f"https://www.kaggle.com/models/{owner}/{family}"


def _claim_collection_staging(folder: Path, variants: list[str], where: str) -> None:
    """The collection's staging folder holds a folder per variant (each claimed by ``publish``
    with its own marker) and the card: a folder holding anything else, or a card that no
    publish-collection wrote, is refused; nothing in it is deleted here."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise PublishError(f"{where}: exists and is not a folder; choose another --stage-dir")
    if folder.exists():
        present = {p.name for p in folder.iterdir()}
        others = sorted(present - {*variants, CARD_NAME, STAGING_MARKER})
        if others or (CARD_NAME in present and STAGING_MARKER not in present):
            raise PublishError(f"{where}: holds files no publish-collection staged "
                               f"({', '.join(others[:5]) or CARD_NAME}); choose an empty or new --stage-dir")
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / STAGING_MARKER, json.dumps({"made_by": "vit-port publish-collection",
                                                            "files": [CARD_NAME]}) + "\n")


def publish_collection(family: str, out: Path | str, target: str, push: bool = False, allow_random: bool = False,
                       stage_dir: Path | str | None = None, private: bool = False,
                       log: Callable[[str], None] | None = None) -> CollectionStaged:
    """Stage (dry run) or push every variant of ``family``'s collection.json under ``out`` whose
    folder verifies and passed parity; refused variants are listed, never sent."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    match = _OWNER.match(target)
    if not match:
        raise PublishError(f"--target {target!r}: a collection target is hf://owner or kaggle://owner "
                           "(each variant goes to its own repository or variation)")
    kind, owner = match.groups()
    out = Path(out)
    path = Path(collection_dir(str(out), family)) / COLLECTION_JSON
    if not path.exists():
        raise PublishError(f"{path}: missing; run `vit-port collection {family}` (or `vit-port collection-card "
                           f"{family}`) with --out {out} first")
    collection = json.loads(path.read_text())
    result = CollectionStaged(Path(stage_dir) if stage_dir else out / STAGING / f"{kind}-{owner}--{family}-collection")
    _claim_collection_staging(result.folder, list(collection["variants"]),
                              f"{result.folder} (--stage-dir)" if stage_dir else f"{result.folder} (the default "
                              "staging folder)")
    for name, entry in collection["variants"].items():
        folder = out / name
        problems = verify_manifest(folder) if folder.is_dir() else [f"{folder}: no artifact folder"]
        if problems:
            result.refused[name] = f"does not verify ({problems[0]})"
        elif entry.get("verdict") != "passed" or not json.loads((folder / "parity.json").read_text()).get("passed"):
            result.refused[name] = "parity did not pass; fix the port (see its parity.md) and port again"
        else:
            try:
                result.staged[name] = publish(folder, variant_target(kind, owner, family, name), push=push,
                                              allow_random=allow_random, stage_dir=result.folder / name,
                                              private=private, log=log)
            except PublishError as exc:
                result.refused[name] = str(exc).splitlines()[0]
    link = _link(kind, owner, family)
    card = render_collection_card(collection, lambda variant: link(variant) if variant in result.staged else None)
    write_text_atomic(result.folder / CARD_NAME, card)
    for name, why in result.refused.items():
        log(f"NOT published: {name}: {why}")
    log(f"Collection card for {target}: {result.folder / CARD_NAME}")
    if push and kind == "hf" and result.staged:
        from huggingface_hub import HfApi

        repo = f"{owner}/{family}-collection"
        api = HfApi()  # token: HF_TOKEN or the login cache, found by huggingface_hub
        api.create_repo(repo_id=repo, repo_type="model", private=private, exist_ok=True)
        api.upload_file(path_or_fileobj=str(result.folder / CARD_NAME), path_in_repo=CARD_NAME, repo_id=repo,
                        repo_type="model", commit_message=f"{family} collection card")
        log(f"Uploaded the collection card: https://huggingface.co/{repo}")
    return result
