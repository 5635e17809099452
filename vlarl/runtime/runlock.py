"""One writer per directory: OS advisory locks on run directories and cache entries.

* :func:`hold` - an exclusive, non-blocking lock for a directory a command owns for its whole
  life (``train``'s run dir, ``eval --out``, ``sft`` / ``distill`` outputs, ``quickstart``'s
  run dir). A second writer fails at once, naming the directory and the holder's pid, host
  and command. The lock is ``fcntl.flock`` on a small file: the kernel drops it when the
  holding process dies, so ``kill -9`` leaves no stale lock (the file stays; its contents
  only describe the last holder).
* :func:`building` - a blocking lock around building a cache entry (demos, tiny models,
  tokenizers): a second builder waits for the first, then finds the entry complete and
  reuses it.

Python's standard library has no cross-platform file lock and the ``filelock`` package is
not a dependency of this stack; ``fcntl.flock`` is the POSIX primitive both would use here
(Linux and macOS, the platforms ManiSkill supports). On NFS, ``flock`` is only as good as the
server's lock support: keep run directories on a local disk or a file system with locking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlarl.config import ConfigError

LOCK_NAME = ".vlarl-lock"
"""The lock file inside a held directory (never part of a run's data)."""


class LockedError(ConfigError):
    """Another process holds the directory (see :func:`hold`)."""


class UnwritableError(ConfigError, PermissionError):
    """The directory (or its lock file) cannot be created: a config error that is also the
    ``PermissionError`` callers already handle."""


@dataclass
class _Held:
    fd: int
    count: int = 1


_HELD: dict[Path, _Held] = {}
"""Locks this process holds, by lock-file path: re-entrant within one process (a resumed run
in the same interpreter, a quickstart stage inside the quickstart's run dir)."""


def launch_env(name: str, default: int) -> int:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` of this process before accelerate has started:
    torchrun sets them; under mpirun (``accelerate launch`` with a MULTI_CPU config) only the
    MPI implementation's own variables exist until ``Accelerator()`` copies them over."""
    mpi = {"RANK": ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"),
           "WORLD_SIZE": ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"),
           "LOCAL_RANK": ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")}
    for var in (name, *mpi.get(name, ())):
        if os.environ.get(var):
            return int(os.environ[var])
    return default


def launch_token() -> str:
    """Identifies one multi-process launch: every rank of a ``torchrun`` / ``accelerate
    launch`` shares ``MASTER_ADDR:MASTER_PORT`` (two concurrent launches on one host cannot);
    empty in a single process."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return f"{addr}:{port}:{os.environ.get('TORCHELASTIC_RUN_ID', '')}" if addr and port else ""


def lock_file(directory: str | Path, inside: bool = True) -> Path:
    """The lock file of ``directory``: inside it, or (``inside=False``, for outputs that are
    replaced by an atomic rename when done) beside it as ``.<name>.vlarl-lock``."""
    d = Path(directory).expanduser().absolute()
    return d / LOCK_NAME if inside else d.parent / f".{d.name}{LOCK_NAME}"


def holder(path: str | Path) -> dict:
    """What the lock file says about its last holder (``{}`` when unreadable)."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} on host {info.get('host')} "
            f"(`{info.get('command', '?')}`, since {info.get('since', '?')})")


def hold(directory: str | Path, what: str, inside: bool = True) -> Path:
    """Take the exclusive lock of ``directory`` for this process's life (or until
    :func:`release`); creates the directory (``inside=True``) or its parent. Raises
    :class:`LockedError` at once if another process holds it. Returns the lock file."""
    path = lock_file(directory, inside)
    key = path.resolve()
    if key in _HELD:
        _HELD[key].count += 1
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as err:
        raise UnwritableError(f"{what} {Path(directory).expanduser()} is not writable "
                              f"({err.strerror}); choose another directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = holder(path)
        raise LockedError(f"{what} {Path(directory).expanduser()} is in use by {_describe(info)}; "
                          "wait for it to finish or stop it, or choose another directory "
                          "(one writer per directory: docs/guarantees.md)") from None
    _write_holder(fd)
    _HELD[key] = _Held(fd)
    return path


def _write_holder(fd: int) -> None:
    """Record this process in the lock file it holds (what :func:`holder` reads back)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "launch": launch_token(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)


def release(directory: str | Path, inside: bool = True) -> None:
    """Drop one :func:`hold` of ``directory`` by this process (the lock goes with the last)."""
    key = lock_file(directory, inside).resolve()
    held = _HELD.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count == 0:
        del _HELD[key]
        os.close(held.fd)  # closing the descriptor drops the flock


@contextlib.contextmanager
def holding(directory: str | Path, what: str, inside: bool = True) -> Iterator[Path]:
    """:func:`hold` for the ``with`` block."""
    path = hold(directory, what, inside)
    try:
        yield path
    finally:
        release(directory, inside)


def hold_count(directory: str | Path, inside: bool = True) -> int:
    """How many times this process holds ``directory``'s lock (0: not held)."""
    held = _HELD.get(lock_file(directory, inside).resolve())
    return held.count if held else 0


def check_held_by_launch(directory: str | Path, what: str) -> None:
    """On a rank other than 0: refuse to start unless rank 0 of this same launch holds the
    directory (rank 0 takes it in preflight, before the ranks meet)."""
    path = lock_file(directory)
    info = holder(path)
    if info.get("launch") != launch_token():
        raise LockedError(f"{what} {directory} is not held by this launch's rank 0 (the lock "
                          f"names {_describe(info)}); another run owns it")
    if info.get("host") == socket.gethostname():  # flock is only visible on one host
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # held, by rank 0 (the file names this launch)
        finally:
            os.close(fd)
        raise LockedError(f"{what} {directory}: rank 0 of this launch does not hold its lock "
                          "(it exited?); refusing to write it unheld")


@contextlib.contextmanager
def building(entry: str | Path, notify_after_s: float = 2.0) -> Iterator[None]:
    """Hold the build lock of a cache ``entry`` (beside it, blocking): a second process
    waits here until the first has finished, then finds the entry complete. Prints once who
    it waits for, so a long build never looks like a hang."""
    path = lock_file(entry, inside=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and time.monotonic() - t0 > notify_after_s:
                    print(f"vlarl: waiting for {_describe(holder(path))}, which is building "
                          f"{entry}", file=sys.stderr, flush=True)
                    told = True
                time.sleep(0.2)
        _write_holder(fd)
        yield
    finally:
        os.close(fd)
