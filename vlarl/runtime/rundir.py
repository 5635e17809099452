"""The run directory: the guard that refuses to clobber a run, and the resumable metrics log.

Writes go through :func:`vlarl.checkpoint.write_bytes` (looked up at call time), so the
failure-injection tests of the checkpoint module cover these files too.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlarl import checkpoint as _ck
from vlarl.config import ConfigError
from vlarl.runtime import runlock


class RunDirError(ConfigError):
    """The output directory cannot be used as asked (flags, permissions, disk space)."""


def prepare_run_dir(path: str | Path, resume: bool, overwrite: bool,
                    min_free_bytes: int = 1 << 30, what: str = "output_dir") -> Path:
    """Lock, create and check the run directory before any training work starts.

    The lock (:func:`vlarl.runtime.runlock.hold`) comes first and is kept for the process's life (or
    until ``runlock.release``): a second process writing the same directory - a new run, a
    resume, an overwrite - fails here naming the holder, instead of interleaving checkpoints.

    An existing non-empty directory needs ``train.resume`` (continue it) or
    ``train.overwrite`` (delete it first): silently mixing two runs' checkpoints and metrics
    is the failure this prevents. Unwritable paths and a nearly full disk fail here, in
    seconds, rather than at the first checkpoint hours later.
    """
    path = Path(path).expanduser()
    if resume and overwrite:
        raise RunDirError("train.resume and train.overwrite are both set; choose one")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"output_dir {path} exists and is not a directory")
    if overwrite and path.is_dir():
        resolved = path.resolve()
        if resolved in (Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()):
            raise RunDirError(f"refusing to overwrite {resolved} (root, home or working directory)")
    try:
        runlock.hold(path, what)
    except OSError as err:
        raise RunDirError(f"output_dir {path} is not writable ({err.strerror or err}); choose "
                          "another --train.output_dir") from None
    try:
        _check_and_clear(path, resume, overwrite, min_free_bytes)
    except BaseException:
        runlock.release(path)
        raise
    return path


def _check_and_clear(path: Path, resume: bool, overwrite: bool, min_free_bytes: int) -> None:
    contents = [p for p in path.iterdir() if p.name != runlock.LOCK_NAME]
    if contents and not (resume or overwrite):
        raise RunDirError(f"output_dir {path} is not empty; pass --train.resume true to continue "
                          "it or --train.overwrite true to delete it")
    if overwrite:  # everything but the lock this process now holds
        for p in contents:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    try:
        probe = path / f".write-test-{os.getpid()}"
        _ck.write_bytes(probe, b"ok")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"output_dir {path} is not writable ({err.strerror or err}); choose "
                          "another --train.output_dir") from None
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        raise RunDirError(f"output_dir {path}: only {free / 2**30:.2f} GiB free, need at least "
                          f"{min_free_bytes / 2**30:.2f} GiB for checkpoints")


# ----------------------------------------------------------------------------- metrics log

def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


class MetricsLogger:
    """Append-only ``metrics.jsonl``: one JSON object per :meth:`log` call, flushed and
    fsync'ed so a crash loses at most the line being written.

    Each line carries its step under ``step_key`` (the trainer's ``update``). With
    ``resume_step=u``, lines with step > u (logged by the crashed run after checkpoint u,
    about to be logged again) and a torn last line are dropped first, so steps have no
    duplicates or gaps after resume. Log a step BEFORE saving its checkpoint.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None, step_key: str = "update"):
        self.path = Path(path)
        self.step_key = step_key
        self.last_step: int | None = None
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the logger

    def _truncate_after(self, step: int) -> None:
        kept: list[str] = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # torn line of a crash
            s = rec.get(self.step_key) if isinstance(rec, dict) else None
            if isinstance(s, int) and s <= step:
                kept.append(line)
                self.last_step = s
        tmp = self.path.with_name(self.path.name + ".tmp")
        _ck.write_bytes(tmp, "".join(line + "\n" for line in kept).encode())
        os.replace(tmp, self.path)
        _ck.fsync_dir(self.path.parent)

    def log(self, record: Mapping[str, Any], step: int | None = None) -> None:
        """Write one line: ``record`` plus ``step`` under ``step_key`` (or the step already in
        ``record``). Steps must increase strictly: a repeat means a resume bug."""
        rec = {k: _jsonable(v) for k, v in record.items()}
        if step is not None:
            rec = {self.step_key: step, **rec}
        s = rec.get(self.step_key)
        if not isinstance(s, int) or isinstance(s, bool):
            raise TypeError(f"{self.step_key}={s!r} must be an int (pass step= or put it in the record)")
        if self.last_step is not None and s <= self.last_step:
            raise ValueError(f"{self.step_key}={s} must be > last logged step {self.last_step}")
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.last_step = s

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> MetricsLogger:  # noqa: PYI034 - py3.10 target has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
