"""What a command may delete or replace (only what it can show it created), and errors in one line.

The rule (README, "Safety"): no command deletes or overwrites a path it did not create. So
scratch folders carry an owner file naming the process that made them (PID, start time and
boot, because a PID alone is reused), and a later command removes one only when that owner is
gone; a destination is locked with ``flock`` for the length of a command (the kernel drops the
lock when the holder dies, however it dies); files are written under a temporary name and
renamed into place, so a reader never sees half a file and a hard link elsewhere is never
written through; and a relative path read from metadata is used only if it stays inside its
folder.

Standard library only: the orchestrating process and every worker import it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import secrets
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

OWNER_NAME = ".owner.json"  # inside every scratch folder
STAGING_MARKER = ".vit-porting-staging"  # inside every staging folder publish made (never uploaded)
# errors of the machine, not of the toolkit: the user frees space, fixes permissions or picks another path
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


class UnsafePathError(ValueError):
    """A path from metadata that is not a plain relative path inside its folder."""


class FolderBusyError(RuntimeError):
    """Another live process holds the lock of a destination."""


def inside(folder: Path | str, rel: str) -> Path:
    """``folder / rel``, refused unless ``rel`` is a plain relative POSIX path (no ``..``, ``.``,
    empty part, backslash or NUL) that still lies inside ``folder`` once symlinks are resolved:
    a manifest entry ``../../victim.txt`` must not make a publish write two levels up."""
    folder = Path(folder)
    parts = rel.split("/")
    if "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError(f"{rel!r} is not a plain relative path inside {folder}")
    path = folder.joinpath(*parts)
    if folder.resolve() not in path.resolve().parents:
        raise UnsafePathError(f"{rel!r} resolves to {path.resolve()}, outside {folder}")
    return path


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``path`` under a temporary name beside it, then rename it into place: a reader never
    sees half a file, and a hard link to the old file (a staged copy) is not written through."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, else its type: libraries' messages run
    to many lines (torch, huggingface_hub), and some are empty (an EOFError)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def describe_os_error(exc: OSError, where: Path | str | None = None) -> str:
    """One line naming the path: a full disk's ``write()`` names no file, so ``where`` does."""
    path = exc.filename or where
    text = exc.strerror or first_line(exc)
    return f"{path}: {text}" if path else text


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_identity(pid: int) -> dict | None:
    """{"pid", "start", "boot"} of a live process, None when it is gone. The start time (clock
    ticks after boot, /proc/<pid>/stat field 22) and the boot id tell a reused PID apart; where
    there is no /proc, only whether the PID exists is known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return {"pid": pid, "start": None, "boot": None}
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    if fields[0] in ("Z", "X"):  # a zombie has finished: it owns nothing any more
        return None
    return {"pid": pid, "start": fields[19], "boot": _boot_id()}


def owner_alive(owner: dict) -> bool:
    """Whether the process an owner record names still runs (the same process, not its PID's heir).
    A process of another machine (a folder every node of a cluster mounts) cannot be seen from
    here: it counts as running, so its scratch folder is never removed from this one."""
    if owner.get("host", platform.node()) != platform.node():
        return True
    now = process_identity(int(owner["pid"]))
    return now is not None and (now["start"], now["boot"]) == (owner.get("start"), owner.get("boot"))


def _identity_text(**extra: str) -> str:
    me = process_identity(os.getpid()) or {"pid": os.getpid(), "start": None, "boot": None}
    return json.dumps({**me, "host": platform.node(),
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra})


def make_scratch(parent: Path | str, stem: str) -> Path:
    """A new hidden folder ``parent/.{stem}-{pid}-XXXX`` that this process owns (its owner file
    says so): removed by this process when done, or by a later one once this process is gone."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{stem}-{os.getpid()}-", dir=parent))
    write_text_atomic(folder / OWNER_NAME, _identity_text(purpose=stem))
    return folder


def remove_stale_scratch(parent: Path | str) -> list[Path]:
    """Remove the scratch folders in ``parent`` whose owner process is gone (a killed port's
    temporary folder); returns them. A folder without a readable owner file is left alone: it
    may be another program's, or one whose owner has not written its file yet."""
    removed = []
    for folder in sorted(Path(parent).glob(".*")):
        owner_file = folder / OWNER_NAME
        if folder.is_symlink() or not folder.is_dir() or owner_file.is_symlink() or not owner_file.is_file():
            continue
        try:
            owner = json.loads(owner_file.read_text())
            if owner_alive(owner):
                continue
        except (OSError, ValueError, TypeError, KeyError):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _read_record(fd: int) -> dict:
    """The owner record in a lock file (empty when its holder has not written it yet)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class FolderLock:
    """An exclusive ``flock`` on ``.{name}.lock`` beside ``folder`` for the length of a command.

    Two ports of one destination would both report PASSED while one result is lost; the second
    is refused instead, naming the holder. The kernel releases the lock when its holder dies, so
    a killed port never blocks the next one. The file is removed on release while still locked;
    a process that opened it just before then finds, once it holds the lock, that the path now
    names another file (or none), and starts again.
    """

    def __init__(self, folder: Path | str, what: str = "port"):
        folder = Path(folder)
        self.folder, self.what = folder, what
        self.path = folder.with_name(f".{folder.name}.lock")
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd)
                os.close(fd)
                raise FolderBusyError(
                    f"{self.folder} is in use by process {holder.get('pid', '?')} "
                    f"({holder.get('what', 'another command')}; lock {self.path}); wait for it to finish") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if os.fstat(fd).st_size and "what" not in _read_record(fd):  # a file of the same name that is not ours
            os.close(fd)
            raise FolderBusyError(f"{self.path} exists and is not a lock file of this toolkit; move it away")
        os.ftruncate(fd, 0)
        os.pwrite(fd, _identity_text(what=self.what).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
