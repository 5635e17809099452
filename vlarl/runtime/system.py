"""Facts about this machine and process that several commands report or use: where the
caches live, how much memory a process (tree) has held, and which commit the code is. One
implementation of each (the thread settings: :mod:`vlarl.runtime.threads`)."""

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


def tree_peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (Linux ``VmHWM``) of this process and of every live descendant
    (env workers, ...), in MB: ``main``, ``children`` (sum), ``largest_child``, ``tree``
    (main + children; an upper bound of what the run held at once: pages the processes share,
    such as torch's libraries, count once per process), and ``tree_pss_now``: the tree's
    proportional set size at the call (each shared page split among its sharers), the memory
    the tree really holds now. Empty without /proc."""
    def hwm(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return 0.0

    if not Path("/proc/self/status").is_file():
        return {}
    import psutil

    def pss(proc) -> float:
        try:
            return proc.memory_full_info().pss / 2**20  # /proc/PID/smaps_rollup
        except (psutil.Error, AttributeError, OSError):
            return 0.0

    me = psutil.Process()
    procs = me.children(recursive=True)
    kids = [hwm(c.pid) for c in procs]
    main = hwm(os.getpid())
    return {"main": round(main, 1), "children": round(sum(kids), 1), "num_children": len(kids),
            "largest_child": round(max(kids, default=0.0), 1), "tree": round(main + sum(kids), 1),
            "tree_pss_now": round(sum(pss(p) for p in (me, *procs)), 1)}


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
