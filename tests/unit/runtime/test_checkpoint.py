"""Crash-safety and exact-resume tests for vlarl.checkpoint (real files, real torch/safetensors)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vlarl import checkpoint as ck
from vlarl.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpointError,
    check_resume_compat,
    load,
)
from vlarl.config import ConfigError
from vlarl.runtime.rng import capture_rng_state, restore_rng_state
from vlarl.runtime.rundir import MetricsLogger, RunDirError, prepare_run_dir


def _state(seed: int):
    """A real model + AdamW after one step, so optimizer state holds exp_avg tensors."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    tensors = {"trainable": {k: v.detach().clone() for k, v in model.state_dict().items()},
               "buffers": {"bf16": torch.randn(5).bfloat16(), "ids": torch.arange(7)}}
    objects = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "rng": capture_rng_state()}
    meta = {"global_step": seed, "world_size": 1, "num_envs": 2}
    return tensors, objects, meta


def _save(mgr: CheckpointManager, update: int):
    t, o, m = _state(update)
    return mgr.save(update, tensors=t, objects=o, meta=m), (t, o, m)


def test_round_trip_is_exact_and_manifest_checksums_match(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    path, (t, o, _m) = _save(mgr, 7)
    assert path.name == "update_000007"
    got = load(path)
    assert got.update == 7 and got.meta["global_step"] == 7 and got.meta["num_envs"] == 2
    assert got.meta["vlarl_version"] == "0.1.0"
    for group in t:
        assert set(got.tensors[group]) == set(t[group])
        for k in t[group]:
            assert got.tensors[group][k].dtype == t[group][k].dtype
            assert torch.equal(got.tensors[group][k], t[group][k])
    st = got.objects["optimizer"]["state"][0]
    assert torch.equal(st["exp_avg"], o["optimizer"]["state"][0]["exp_avg"])
    assert got.objects["scheduler"]["last_epoch"] == 1
    manifest = json.loads((path / "manifest.json").read_text())
    assert len(manifest["files"]) == 6  # 2 tensors + 3 objects + meta
    for rel, entry in manifest["files"].items():
        data = (path / rel).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_tied_weights_are_saved(tmp_path):
    w = torch.randn(3, 3)
    path = CheckpointManager(tmp_path).save(0, tensors={"t": {"a": w, "b": w}})
    got = load(path).tensors["t"]
    assert torch.equal(got["a"], w) and torch.equal(got["b"], w)


def _count_writes(tmp_path: Path, monkeypatch) -> int:
    calls = []
    real = ck.write_bytes
    monkeypatch.setattr(ck, "write_bytes", lambda p, d: (calls.append(p), real(p, d))[1])
    _save(CheckpointManager(tmp_path / "count", keep_last=1), 1)
    monkeypatch.setattr(ck, "write_bytes", real)
    return len(calls)


def test_crash_at_every_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    n = _count_writes(tmp_path, monkeypatch)
    assert n == 7  # 2 tensors + 3 objects + meta + manifest (last)
    real_write, real_rename = ck.write_bytes, ck._rename
    # failure points: each write (torn: half the bytes, then crash), then each rename
    for i in range(n + 1):
        root = tmp_path / f"r{i}"
        mgr = CheckpointManager(root, keep_last=1)
        good, (t1, _, _) = _save(mgr, 1)
        calls = {"w": 0}

        def torn_write(path, data, i=i, calls=calls):
            calls["w"] += 1
            if calls["w"] == i + 1:
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                raise OSError(f"injected crash at write {i}")
            real_write(path, data)

        def failing_rename(src, dst):
            raise OSError("injected crash at rename")

        monkeypatch.setattr(ck, "write_bytes", torn_write)
        if i == n:
            monkeypatch.setattr(ck, "_rename", failing_rename)
        with pytest.raises(OSError, match="injected"):
            _save(mgr, 2)
        monkeypatch.setattr(ck, "write_bytes", real_write)
        monkeypatch.setattr(ck, "_rename", real_rename)
        # the half-written checkpoint is never published, the old one survives (not pruned)
        assert [u for u, _ in mgr.checkpoints()] == [1], i
        assert mgr.latest_good_path() == good and mgr.latest_good().update == 1
        assert torch.equal(load(good).tensors["trainable"]["0.weight"], t1["trainable"]["0.weight"])
        # the next save succeeds, cleans the stale temp dir and prunes to keep_last
        _save(mgr, 2)
        assert sorted(p.name for p in root.iterdir()) == ["update_000002"]


def test_prune_keeps_last_and_resaving_an_update_replaces_it(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for u in range(1, 5):
        _save(mgr, u)
    assert [u for u, _ in mgr.checkpoints()] == [3, 4]
    path = mgr.save(4, meta={"again": True})
    assert load(path).meta["again"] is True
    assert [u for u, _ in mgr.checkpoints()] == [3, 4]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_manifest"])
def test_corrupt_checkpoint_is_detected_and_skipped(tmp_path, damage, caplog):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    good, _ = _save(mgr, 1)
    bad, _ = _save(mgr, 2)
    target = bad / "trainable.safetensors"
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # one bit
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[:-10]))
    else:
        (bad / "manifest.json").unlink()
    name = "manifest.json" if damage == "delete_manifest" else "trainable.safetensors"
    with pytest.raises(CorruptCheckpointError, match=name):
        load(bad)
    with caplog.at_level(logging.WARNING, logger="vlarl.checkpoint"):
        assert mgr.latest_good().update == 1 and mgr.latest_good_path() == good
    assert name in caplog.text and "update_000002" in caplog.text


class Custom:
    """A pickled class: not loadable with weights_only=True."""


def test_unsafe_object_needs_weights_only_false_and_is_not_skipped(tmp_path):
    mgr = CheckpointManager(tmp_path)
    _save(mgr, 1)
    mgr.save(2, objects={"custom": Custom()})
    with pytest.raises(CheckpointError, match="custom.pt.*weights_only=False"):
        mgr.latest_good()  # an intact checkpoint is never silently replaced by an older one
    assert isinstance(load(tmp_path / "update_000002", weights_only=False).objects["custom"], Custom)


def test_latest_good_none_and_tmp_dirs_ignored(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    assert mgr.latest_good() is None
    (tmp_path / ".tmp-000009-dead").mkdir()
    (tmp_path / ".tmp-000009-dead" / "manifest.json").write_text("{}")
    assert mgr.latest_good() is None and mgr.latest_good_path() is None
    assert mgr.clean_stale() == [tmp_path / ".tmp-000009-dead"]


def test_bad_inputs_fail_before_writing(tmp_path):
    mgr = CheckpointManager(tmp_path / "c")
    with pytest.raises(CheckpointError, match="not JSON"):
        mgr.save(1, meta={"x": object()})
    with pytest.raises(CheckpointError, match="'meta'"):
        mgr.save(1, objects={"meta": 1})
    assert not (tmp_path / "c").exists()
    with pytest.raises(ConfigError, match="keep_last=0"):
        CheckpointManager(tmp_path, keep_last=0)


def test_extra_dirs_are_checksummed(tmp_path):
    def writer(d: Path) -> None:
        (d / "sub").mkdir()
        (d / "sub" / "w.bin").write_bytes(b"\x00" * 100)

    path = CheckpointManager(tmp_path).save(3, extra_dirs={"policy": writer})
    assert (path / "policy" / "sub" / "w.bin").stat().st_size == 100
    (path / "policy" / "sub" / "w.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(CheckpointError, match="w.bin"):
        load(path)


def test_rng_restore_reproduces_next_draws(tmp_path):
    gen = torch.Generator().manual_seed(123)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in the legacy state
    state = capture_rng_state({"env": gen})
    draws = (random.random(), np.random.standard_normal(3), torch.rand(4),
             torch.rand(4, generator=gen))
    # through a checkpoint (torch.load weights_only=True) and back
    path = CheckpointManager(tmp_path).save(0, objects={"rng": state})
    restore_rng_state(load(path).objects["rng"], {"env": gen})
    again = (random.random(), np.random.standard_normal(3), torch.rand(4),
             torch.rand(4, generator=gen))
    assert draws[0] == again[0]
    assert np.array_equal(draws[1], again[1])
    assert torch.equal(draws[2], again[2]) and torch.equal(draws[3], again[3])
    with pytest.raises(ValueError, match="generator names"):
        restore_rng_state(state, {})


def test_resume_compat_policy():
    saved = {"world_size": 2, "num_envs": 8, "gradient_accumulation_steps": 1,
             "config": {"algo": {"name": "ppo"}}}
    assert check_resume_compat(saved, dict(saved), fields=("world_size", "config.algo.name")) == []
    with pytest.raises(ConfigError, match="num_envs changed: checkpoint has 8, current run has 4"):
        check_resume_compat(saved, {**saved, "num_envs": 4})
    warns = check_resume_compat(saved, {**saved, "world_size": 1, "gradient_accumulation_steps": 2},
                                fields=("world_size", "gradient_accumulation_steps", "seed"),
                                allow_changed=True)
    assert len(warns) == 3
    assert warns[1].startswith("gradient_accumulation_steps changed") and "seed" in warns[2]


def test_prepare_run_dir_flags_and_errors(tmp_path):
    run = tmp_path / "run"
    assert prepare_run_dir(run, resume=False, overwrite=False) == run and run.is_dir()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunDirError, match="--train.resume.*--train.overwrite"):
        prepare_run_dir(run, resume=False, overwrite=False)
    prepare_run_dir(run, resume=True, overwrite=False)
    assert (run / "metrics.jsonl").exists()
    prepare_run_dir(run, resume=False, overwrite=True)
    assert [p.name for p in run.iterdir()] == [".vlarl-lock"]  # the lock this process holds
    with pytest.raises(RunDirError, match="choose one"):
        prepare_run_dir(run, resume=True, overwrite=True)
    with pytest.raises(RunDirError, match="GiB free"):
        prepare_run_dir(run, resume=True, overwrite=False, min_free_bytes=1 << 62)
    # unwritable: a path under a regular file fails even for root
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not writable"):
        prepare_run_dir(tmp_path / "file" / "run", resume=False, overwrite=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores chmod; covered by the path-under-file case")
def test_prepare_run_dir_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="not writable"):
            prepare_run_dir(ro, resume=False, overwrite=False)
    finally:
        ro.chmod(0o700)


def test_metrics_logger_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLogger(path) as m:
        for s in range(1, 6):
            m.log({"update": s, "loss": torch.tensor(0.5 * s), "n": np.int64(s)})
        with pytest.raises(ValueError, match="update=5 must be > last logged step 5"):
            m.log({"update": 5})
        with pytest.raises(TypeError, match="update=None must be an int"):
            m.log({"loss": 1.0})
    with open(path, "a") as f:
        f.write('{"update": 6, "lo')  # torn line of a crash
    with MetricsLogger(path, resume_step=3) as m:
        assert m.last_step == 3
        for s in range(4, 8):
            m.log({"loss": 0.0}, step=s)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["update"] for r in recs] == list(range(1, 8))
    assert recs[1]["loss"] == 1.0 and recs[1]["n"] == 2
