"""Crash-safe checkpoints and the plumbing of exact resume.

A checkpoint is a directory ``<ckpt_root>/update_{update:06d}`` holding
``<name>.safetensors`` (tensors), ``<name>.pt`` (``torch.save``'d objects: optimizer /
scheduler state, RNG states), ``meta.json`` and, written LAST, ``manifest.json`` with the
sha256 and size of every other file. It is built in ``<ckpt_root>/.tmp-*``, every file and
the directory are fsync'ed, then one ``rename`` publishes it; older checkpoints are pruned
only after that. So a crash at any instant leaves either the old set of checkpoints or the
old set plus a complete new one, never a half-written ``update_*`` that resume could pick.
Bit rot / truncation is caught by the manifest checksums (verified before anything is
deserialised) and :meth:`CheckpointManager.latest_good` falls back to the previous one.

Every byte goes through :func:`write_bytes` and every publish through :func:`_rename`,
so tests can inject a crash at the i-th write (see ``tests/unit/runtime/test_checkpoint.py``).

The resume-compatibility check lives here too; RNG capture/restore is
:mod:`vlarl.runtime.rng`, the run-directory guard and the resumable metrics.jsonl logger
:mod:`vlarl.runtime.rundir`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vlarl.config import ConfigError
from vlarl.runtime.system import git_commit

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
META = "meta.json"
FORMAT_VERSION = 1
_UPDATE_RE = re.compile(r"^update_(\d{6,})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message names the file."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint is incomplete or fails its checksums (resume skips it)."""


# ----------------------------------------------------------------------------- low-level I/O

def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it: the ONLY way this module writes a file."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rename(src: Path, dst: Path) -> None:
    """Atomically publish ``src`` as ``dst`` (same filesystem); the only rename used."""
    os.rename(src, dst)


def fsync_dir(path: Path) -> None:
    """fsync a directory so the names inside it (new files, renames) survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def provenance() -> dict[str, Any]:
    """Versions stored in every checkpoint's meta so a resume can say what changed."""
    from vlarl import __version__

    return {"vlarl_version": __version__, "git_commit": git_commit(),
            "torch_version": torch.__version__}


# ----------------------------------------------------------------------------- checkpoint

@dataclass
class Checkpoint:
    """A loaded, checksum-verified checkpoint."""

    update: int
    tensors: dict[str, dict[str, torch.Tensor]]
    objects: dict[str, Any]
    meta: dict[str, Any]
    path: Path = field(default_factory=Path)


def _check_name(kind: str, name: str) -> None:
    if not _NAME_RE.match(name) or name in ("meta", "manifest"):
        raise CheckpointError(f"{kind} name {name!r} is not allowed: use letters, digits, "
                              f"'_', '.', '-' and not 'meta' / 'manifest'")


def _tensor_bytes(name: str, tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes; tensors sharing storage (tied weights) are cloned, since
    safetensors refuses shared storage."""
    seen: set[int] = set()
    flat: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"tensors[{name!r}][{key!r}] is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        flat[key] = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
    return st_save(flat)


def _object_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _verified(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, verified bytes of every listed file); raises CheckpointError naming a file."""
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_bytes())
        files = {rel: (int(e["size"]), str(e["sha256"])) for rel, e in manifest["files"].items()}
        int(manifest["update"])
        if not (isinstance(manifest["tensors"], list) and isinstance(manifest["objects"], list)):
            raise TypeError("'tensors' and 'objects' must be lists")
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{mpath}: missing (checkpoint incomplete)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptCheckpointError(f"{mpath}: unreadable manifest ({err!r})") from None
    out: dict[str, bytes] = {}
    for rel, (size, sha) in files.items():
        fpath = path / rel
        try:
            data = fpath.read_bytes()
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{fpath}: listed in the manifest but missing") from None
        if len(data) != size:
            raise CorruptCheckpointError(f"{fpath}: size {len(data)} != {size} in the manifest "
                                  "(truncated or overwritten)")
        if _sha256(data) != sha:
            raise CorruptCheckpointError(f"{fpath}: sha256 mismatch with the manifest (corrupt file)")
        out[rel] = data
    return manifest, out


def verify(path: str | Path) -> None:
    """Check ``path``'s manifest (sha256 + size of every file) without deserialising.

    Raises :class:`CheckpointError` naming the first missing / truncated / corrupt file.
    """
    _verified(Path(path))


def load(path: str | Path, *, weights_only: bool = True) -> Checkpoint:
    """Verify, then deserialise a checkpoint directory (from the very bytes that were hashed).

    ``weights_only=True`` loads objects with torch's safe unpickler (state dicts, tensors,
    plain Python); pass False only for checkpoints you trust that hold arbitrary objects.
    """
    path = Path(path)
    manifest, data = _verified(path)
    try:
        tensors = {name: st_load(data[f"{name}.safetensors"]) for name in manifest["tensors"]}
        meta = json.loads(data[META])
    except KeyError as err:
        raise CorruptCheckpointError(f"{path}: {err} is named in the manifest but not "
                                     "listed")  from None
    objects: dict[str, Any] = {}
    for name in manifest["objects"]:
        try:
            objects[name] = torch.load(io.BytesIO(data[f"{name}.pt"]), map_location="cpu",
                                       weights_only=weights_only)
        except Exception as err:  # re-raised with the file name
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [repr(err)]
            why = next((ln for ln in lines if "Unsupported global" in ln), lines[0])
            raise CheckpointError(f"{path / (name + '.pt')}: cannot unpickle ({why}); if you "
                                  "trust it, load(..., weights_only=False)") from err
    return Checkpoint(int(manifest["update"]), tensors, objects, meta, path)


class CheckpointManager:
    """Atomic save, pruning and verified discovery of ``update_*`` checkpoints in ``ckpt_root``.

    Call :meth:`save` on the main process only (other ranks wait at a barrier).
    """

    def __init__(self, ckpt_root: str | Path, keep_last: int = 2,
                 min_free_factor: float = 1.1):
        if keep_last < 1:
            raise ConfigError(f"keep_last={keep_last} must be >= 1")
        self.root = Path(ckpt_root)
        self.keep_last = keep_last
        self.min_free_factor = min_free_factor
        """Refuse to start a save unless free disk >= factor * checkpoint size."""

    # -- discovery
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Published ``update_*`` directories, oldest first (``.tmp-*`` never included)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if p.is_dir() and (m := _UPDATE_RE.match(p.name))]
        return sorted(found)

    def latest_good_path(self) -> Path | None:
        """Newest checkpoint whose manifest verifies; corrupt ones are skipped with a warning."""
        for _, path in reversed(self.checkpoints()):
            try:
                verify(path)
            except CorruptCheckpointError as err:
                log.warning("skipping corrupt checkpoint: %s", err)
                continue
            return path
        return None

    def latest_good(self, *, weights_only: bool = True) -> Checkpoint | None:
        """Load the newest intact checkpoint (the resume entry point), hashing each file once.

        Incomplete / corrupt ones are skipped with a warning naming the file; an intact one
        that cannot be unpickled raises (it must not be silently replaced by an older one).
        """
        for _, path in reversed(self.checkpoints()):
            try:
                return load(path, weights_only=weights_only)
            except CorruptCheckpointError as err:
                log.warning("skipping corrupt checkpoint: %s", err)
        return None

    def clean_stale(self) -> list[Path]:
        """Delete ``.tmp-*`` / ``.trash-*`` leftovers of interrupted saves."""
        removed = []
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        return removed

    # -- save
    def save(self, update: int, *, tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
             objects: Mapping[str, Any] | None = None, meta: Mapping[str, Any] | None = None,
             extra_dirs: Mapping[str, Callable[[Path], None]] | None = None) -> Path:
        """Write ``update_{update:06d}`` atomically, then prune beyond ``keep_last``.

        ``extra_dirs`` maps a sub-directory name to a writer, e.g.
        ``{"policy": policy.save_pretrained}``; its files are fsync'ed and checksummed too.
        """
        if not isinstance(update, int) or update < 0:
            raise CheckpointError(f"update={update!r} must be an int >= 0")
        # Serialise everything in memory first: a bad value fails before any disk write.
        payload: dict[str, bytes] = {}
        for name, tdict in (tensors or {}).items():
            _check_name("tensors", name)
            payload[f"{name}.safetensors"] = _tensor_bytes(name, tdict)
        for name, obj in (objects or {}).items():
            _check_name("objects", name)
            payload[f"{name}.pt"] = _object_bytes(obj)
        full_meta = {**provenance(), **dict(meta or {}), "update": update}
        try:
            payload[META] = json.dumps(full_meta, indent=2, sort_keys=True).encode()
        except TypeError as err:
            raise CheckpointError(f"meta is not JSON-serialisable: {err}") from None
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_stale()
        self._check_space(sum(len(b) for b in payload.values()))

        tmp = self.root / f".tmp-{update:06d}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        files: dict[str, dict[str, Any]] = {}
        for rel, data in payload.items():
            write_bytes(tmp / rel, data)
            files[rel] = {"sha256": _sha256(data), "size": len(data)}
        for sub, writer in (extra_dirs or {}).items():
            _check_name("extra_dirs", sub)
            files.update(self._capture_dir(tmp, sub, writer))
        manifest = {"format": FORMAT_VERSION, "update": update, "created": time.time(),
                    "tensors": sorted((tensors or {}).keys()),
                    "objects": sorted((objects or {}).keys()), "files": files}
        fsync_dir(tmp)
        write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())
        fsync_dir(tmp)

        final = self.root / f"update_{update:06d}"
        if final.exists():  # re-saving an update (e.g. after resuming past a corrupt one)
            _rename(final, self.root / f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        _rename(tmp, final)
        fsync_dir(self.root)
        self._prune(update)
        return final

    def _capture_dir(self, tmp: Path, sub: str, writer: Callable[[Path], None]
                     ) -> dict[str, dict[str, Any]]:
        """Run a third-party directory writer inside the temp dir, then fsync + hash its files."""
        target = tmp / sub
        target.mkdir()
        writer(target)
        files = {}
        for p in sorted(target.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
                files[p.relative_to(tmp).as_posix()] = {"sha256": _sha256(data), "size": len(data)}
            elif p.is_dir():
                fsync_dir(p)
        fsync_dir(target)
        return files

    def _check_space(self, nbytes: int) -> None:
        free = shutil.disk_usage(self.root).free
        need = int(nbytes * self.min_free_factor)
        if free < need:
            raise CheckpointError(f"{self.root}: only {free / 2**20:.1f} MiB free, a checkpoint "
                                  f"needs {need / 2**20:.1f} MiB; free space or lower keep_last")

    def _prune(self, current: int) -> None:
        """Keep the newest ``keep_last`` checkpoints <= ``current``. Newer numbers (from a
        timeline abandoned by resuming an older checkpoint) are left for a human to judge."""
        older = [p for u, p in self.checkpoints() if u <= current]
        for path in older[:-self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
        self.clean_stale()


# ----------------------------------------------------------------------------- resume guard

STRICT_FIELDS = ("world_size", "num_envs", "rollouts_per_update")
"""Changing these breaks exact resume: per-rank RNG / env streams no longer line up and the
batch size changes; refused unless ``allow_changed=True``."""


def _lookup(meta: Mapping[str, Any], dotted: str) -> Any:
    cur: Any = meta
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


_MISSING = object()


def check_resume_compat(saved_meta: Mapping[str, Any], current_meta: Mapping[str, Any],
                        fields: Iterable[str] = ("world_size", "num_envs", "rollouts_per_update",
                                                 "gradient_accumulation_steps", "rollout_steps",
                                                 "vlarl_version", "git_commit"),
                        strict: Iterable[str] = STRICT_FIELDS,
                        allow_changed: bool = False) -> list[str]:
    """Compare run settings of a checkpoint with the current run (dotted keys allowed).

    A changed ``strict`` field raises :class:`ConfigError` naming it (unless
    ``allow_changed``); any other change, or a field missing on one side, is returned as a
    warning string so the trainer can log it.
    """
    strict = set(strict)
    current_meta = {**provenance(), **current_meta}  # this run's versions are known here
    warnings: list[str] = []
    for key in fields:
        old, new = _lookup(saved_meta, key), _lookup(current_meta, key)
        if old is _MISSING or new is _MISSING:
            side = "checkpoint" if old is _MISSING else "current run"
            warnings.append(f"{key}: not recorded in the {side}; cannot check it")
            continue
        if old == new:
            continue
        msg = f"{key} changed: checkpoint has {old!r}, current run has {new!r}"
        if key in strict and not allow_changed:
            raise ConfigError(f"{msg}. Exact resume needs the same {key}; restore it, or "
                              "resume anyway with allow_changed=True (not bit-exact).")
        warnings.append(msg)
    return warnings

