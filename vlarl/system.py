"""Facts about this machine and process that several commands report or use: where the
caches live and how much memory a process has held. One implementation of each."""

from __future__ import annotations

import os
import resource
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
