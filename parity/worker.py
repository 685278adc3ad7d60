"""Plumbing shared by the per-runtime worker processes.

Each runtime runs in its own process (``python -m parity.run_torch JOB.json``, ...): importing
TensorFlow and torch into one process aborts or crashes it, two thread pools fight over the
cores, and an artifact is only proven when it loads from disk in a process that did not
write it. A job is a JSON file; the worker writes a JSON result beside it and exits 2 with
a one-paragraph message on an error the user can act on.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

USER_ERROR_EXIT = 2

# Keep TensorFlow's C++ start-up chatter out of the user's terminal.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}


class WorkerError(RuntimeError):
    """A worker process failed; ``message`` is what it said went wrong."""

    def __init__(self, module: str, job: str, message: str, user_error: bool):
        self.module, self.job, self.message, self.user_error = module, job, message, user_error
        super().__init__(message)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_main(jobs: dict[str, Callable[[dict], dict]], user_errors: tuple[type, ...],
                argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    result_path = Path(job["result"])
    start = time.perf_counter()
    try:
        result = jobs[job["job"]](job)
    except user_errors as exc:
        result_path.write_text(json.dumps({"ok": False, "error": str(exc), "user_error": True}))
        print(str(exc), file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    result.update(ok=True, seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())
    result_path.write_text(json.dumps(result, indent=1, default=str))


def run_worker(module: str, job: dict, work_dir: Path, env: dict | None = None) -> dict:
    """Run one job in a fresh process and return its result (raises WorkerError)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{module.rsplit('.', 1)[-1]}-{job['job']}-{time.monotonic_ns()}"
    job = {**job, "result": str(work_dir / f"{stem}.result.json")}
    job_path = work_dir / f"{stem}.job.json"
    job_path.write_text(json.dumps(job, indent=1, default=str))
    full_env = {**os.environ, **QUIET_ENV, **(env or {})}
    repo_root = str(Path(__file__).resolve().parent.parent)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, full_env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", module, str(job_path)], env=full_env,
                          stderr=subprocess.PIPE, text=True)
    result_path = Path(job["result"])
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    if proc.returncode != 0 or not result or not result.get("ok"):
        if result and result.get("error"):
            raise WorkerError(module, job["job"], result["error"], bool(result.get("user_error")))
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise WorkerError(module, job["job"],
                          f"{module} {job['job']} failed (exit code {proc.returncode}):\n{tail}", False)
    return result
