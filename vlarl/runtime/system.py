"""Facts about this machine and process that several commands report or use: where the
caches live, how much memory a process has held, which commit the code is. One implementation of each."""

from __future__ import annotations

import functools
import os
import resource
import subprocess
from pathlib import Path


def cache_root() -> Path:
    """Root of vlarl's on-disk caches (datasets, tokenizers, tiny models, quickstart stages):
    ``$VLARL_CACHE`` if set, else ``~/.cache/vlarl``."""
    return Path(os.environ.get("VLARL_CACHE", "~/.cache/vlarl")).expanduser()


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (Linux reports KiB), plus the largest of its
    finished children's (env workers, ...) with ``children``, in MB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if children:
        kib += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(kib / 1024.0, 1)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the vlarl source tree (``+dirty`` if it has local changes); None outside git."""
    root = Path(__file__).resolve().parents[2]  # the repository (vlarl/runtime/system.py)
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        # --no-optional-locks: a report must never take git's index lock (read-only).
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(root), "status",
                                "--porcelain", "--", "vlarl"], capture_output=True, text=True,
                               timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")
