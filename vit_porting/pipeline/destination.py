"""Where a port lands: refused before any work when it must not be replaced, renamed into place at
the end, a replaced port removed only after the new one is in place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from vit_porting.manifest import is_port_folder
from vit_porting.pipeline.options import PortError


def check_destination(final: Path, force: bool) -> None:
    """Refuse, before any work, a destination the port must not replace: any existing folder
    without ``--force``, and with it anything that is not an artifact folder of a port."""
    if not (final.exists() or final.is_symlink()):
        return
    if not force:
        raise PortError(f"{final} already exists; pass --force to replace it")
    if final.is_symlink() or not is_port_folder(final):
        raise PortError(f"{final} is not an artifact folder of a port (no manifest.json of vit-porting); "
                        "--force replaces only those: move it away or choose another --out")


def prepare_root(root: Path) -> None:
    """The artifacts root exists and is a writable folder, or the port stops naming it."""
    if root.exists() and not root.is_dir():
        raise PortError(f"{root}: the artifacts root (--out) is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PortError(f"{root}: cannot create the artifacts root (--out): {exc.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise PortError(f"{root}: the artifacts root (--out) is not writable")


def replace_folder(tmp: Path, final: Path, force: bool) -> None:
    """Rename ``tmp`` into place; a replaced port goes first to a unique hidden name beside it
    (a kill between the two renames leaves it there, never deleted) and is then removed."""
    if final.exists():
        check_destination(final, force)
        old = final.with_name(f"{tmp.parent.name}.previous")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
