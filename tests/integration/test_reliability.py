"""Reliability of the RL trainer on real parts (ManiSkill env, tiny token VLA, peft,
accelerate): preemption by signal, the NaN/Inf guard, a dead env worker, resume
compatibility, bad input failing fast, and wandb never blocking or killing a run.
Each test is the proof of one promise in docs/guarantees.md."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, run_cpu_timed, train_config

from vlarl.checkpoint import load
from vlarl.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TINY = [*TINY_TRAIN, "--train.num_updates", "4", "--train.keep_last", "5"]


def _cfg(out: Path, *extra: str):
    return train_config(out, *TINY[len(TINY_TRAIN):], *extra)


def _updates(run_dir: Path) -> list[int]:
    return [json.loads(x)["update"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlarl", "train", *args]


# ----------------------------------------------------------------------------- 1. preemption

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_checkpoints_exits_0_and_resume_completes(tmp_path, sig):
    out = tmp_path / "run"
    cmd = _cli(*TINY, "--train.output_dir", str(out))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    first = out / "checkpoints" / "update_000001"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.exists(), proc.stderr.read()[-2000:] if proc.poll() is not None else "timeout"
    os.kill(proc.pid, sig)  # now inside update 2 (its rollout, usually)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 60
    assert proc.returncode == 0, err[-2000:]
    assert f"{sig.name} received; checkpointed update 2" in err
    done = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert done == ["update_000001", "update_000002"]  # the update in flight was finished
    assert _updates(out) == [1, 2]
    assert not (out / "policy").exists()  # not exported: the run is not finished
    res = subprocess.run(cmd + ["--train.resume", "true"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert _updates(out) == [1, 2, 3, 4]  # no gap, no duplicate
    assert load(out / "checkpoints" / "update_000004").meta["env_steps"] == 4 * 8
    assert (out / "policy").is_dir()


# ----------------------------------------------------------------------------- 2. NaN guard

@pytest.mark.slow
def test_nan_loss_skips_steps_then_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    from vlarl.algorithms import NonFiniteError
    from vlarl.algorithms.ppo import PPO
    from vlarl.trainer import train

    real_loss = PPO.loss

    def nan_from_update_2(self, policy, batch, ctx, update_idx):
        loss, parts = real_loss(self, policy, batch, ctx, update_idx)
        if update_idx >= 1:
            parts = {**parts, "value_loss": parts["value_loss"] * float("nan")}
            loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(PPO, "loss", nan_from_update_2)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"non-finite value_loss on 2 .*max_nan_strikes=2"):
        train(_cfg(out, "--algo.max_nan_strikes", "2"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == [1, 2]
    assert lines[0]["algo/optimizer_steps"] == 1.0 and "algo/nonfinite" not in lines[0]
    assert lines[1]["algo/nonfinite"] == "value_loss"  # the metrics name the tensor
    assert lines[1]["algo/skipped_steps"] == 1.0 and lines[1]["algo/optimizer_steps"] == 0.0
    assert lines[1]["algo/nan_strikes"] == 1.0
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["update_000001", "update_000002"]  # nothing written after the failure
    one, two = (load(out / "checkpoints" / n) for n in ckpts)
    for k, t in two.tensors["trainable"].items():
        assert torch.isfinite(t).all(), k
        assert torch.equal(t, one.tensors["trainable"][k]), f"skipped step changed {k}"
    assert two.objects["algo"]["nan_strikes"] == 1  # strikes survive a resume


# ----------------------------------------------------------------------------- 3. env worker

@pytest.mark.slow
def test_killed_env_worker_stops_run_naming_it(tmp_path):
    from vlarl.envs import make_env
    from vlarl.envs.vector import WorkerError
    from vlarl.trainer import train

    out = tmp_path / "run"
    envs = []

    def make_and_keep(env_cfg):
        envs.append(make_env(env_cfg))
        return envs[-1]

    def kill_after_first_checkpoint():
        deadline = time.time() + 240
        while not (out / "checkpoints" / "update_000001").exists() and time.time() < deadline:
            time.sleep(0.02)
        os.kill(envs[0].pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    t0 = time.perf_counter()
    died = r"env worker 0 \(pid \d+, PickCube-v1\) died with exit code -9"
    with pytest.raises(WorkerError, match=died):
        train(_cfg(out, "--env.backend", "cpu", "--train.num_updates", "50"),
              make_env_fn=make_and_keep)
    assert time.perf_counter() - t0 < 240
    killer.join(5)
    assert not any(p.is_alive() for p in envs[0]._procs)  # nothing left running
    done = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert done and all(n.startswith("update_") for n in done)  # no half-written .tmp-*
    last = load(out / "checkpoints" / done[-1])  # intact: the manifest verifies
    assert _updates(out)[-1] >= last.update


# ----------------------------------------------------------------------------- 4+6. compat, wandb

@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    """A finished 2-update run logged to wandb in offline mode (no network)."""
    from vlarl.trainer import train

    out = tmp_path_factory.mktemp("wandb") / "run"
    t0 = time.perf_counter()
    train(_cfg(out, "--train.num_updates", "2", "--train.report_to", "wandb",
               "--train.wandb_mode", "offline"))
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_wandb_offline_never_blocks(wandb_run):
    out, seconds = wandb_run
    assert seconds < 120
    assert _updates(out) == [1, 2]
    assert list((out / "wandb").glob("offline-run-*"))  # wandb wrote its local files
    assert load(out / "checkpoints" / "update_000002").meta["wandb_id"]


@pytest.mark.slow
@pytest.mark.parametrize("field,value", [("env.num_envs", "2"), ("world_size", "2"),
                                         ("train.rollouts_per_update", "2")])
def test_resume_refuses_changed_world_size_or_num_envs(wandb_run, monkeypatch, field, value):
    from vlarl.trainer import train

    out, _ = wandb_run
    extra = ["--env.num_envs", value, "--env.backend", "cpu"] if field == "env.num_envs" else []
    if field == "train.rollouts_per_update":  # the seed streams and the batch change too
        extra = ["--train.rollouts_per_update", value]
    if field == "world_size":
        monkeypatch.setenv("WORLD_SIZE", value)
    t0 = time.perf_counter()
    name = field.split(".")[-1]
    with pytest.raises(ConfigError, match=rf"{name} changed: checkpoint has 1, current run has 2"):
        train(_cfg(out, "--train.resume", "true", "--train.num_updates", "3", *extra))
    assert time.perf_counter() - t0 < 5  # refused before envs or models start


@pytest.mark.slow
def test_resume_warns_on_changed_grad_accumulation_and_wandb_init_failure(wandb_run, monkeypatch,
                                                                          tmp_path):
    import wandb

    from vlarl.trainer import train

    def broken_init(*a, **k):
        raise RuntimeError("wandb backend exploded")

    monkeypatch.setattr(wandb, "init", broken_init)
    out = tmp_path / "run"  # a copy: this resume adds update 3, the module's run stays at 2
    shutil.copytree(wandb_run[0], out)
    with pytest.warns(UserWarning) as record:
        train(_cfg(out, "--train.resume", "true", "--train.num_updates", "3",
                   "--algo.gradient_accumulation_steps", "2", "--train.report_to", "wandb"))
    messages = [str(w.message) for w in record]
    assert any("gradient_accumulation_steps changed: checkpoint has 1, current run has 2" in m
               for m in messages), messages
    assert any("wandb.init failed" in m and "exploded" in m for m in messages), messages
    assert _updates(out) == [1, 2, 3]  # training went on without wandb


def test_wandb_disabled_never_imports_or_calls_wandb(monkeypatch):
    from vlarl.runtime.tracking import WandbTracker

    monkeypatch.setitem(sys.modules, "wandb", None)  # an import would raise
    tracker = WandbTracker(True, "disabled", "p", "/nonexistent", {})
    tracker.log({"x": 1.0}, step=1)
    tracker.finish()
    assert tracker.run is None and tracker.run_id is None


# ----------------------------------------------------------------------------- 5. bad input

BAD_INPUTS = [
    (["--train.learing_rate", "1e-3"], "unknown key 'train.learing_rate'"),
    (["--train.learning_rate", "fast"], "train.learning_rate='fast' must be a float"),
    (["--train.num_updates", "2.5"], "train.num_updates=2.5 must be an int"),
    (["--env.task", "PickBanana-v1"], "unknown task 'PickBanana-v1'; allowed: ['PickCube-Color-v1', 'PickCube-v1'"),
    (["--env.split", "moon"], "unknown split 'moon'; allowed:"),
    (["--policy.name", "gpt"], "policy.name='gpt' is not allowed; choose one of"),
    (["--algo.name", "sac"], "algo.name='sac' is not allowed; choose one of ['grpo', 'ppo', "),
    (["--policy.path", "/nonexistent"], "policy.path='/nonexistent': no such directory"),
    (["--policy.path", "someorg/somemodel"], "not in the local cache and HF_HUB_OFFLINE=1"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args,message", BAD_INPUTS + [
    ("yaml", "YAML syntax error"), ("under_file", "is not writable"), ("existing", "is not empty")])
def test_bad_input_fails_fast_naming_the_key(tmp_path, args, message):
    out = tmp_path / "run"
    if args == "yaml":
        recipe = tmp_path / "bad.yaml"
        recipe.write_text("train:\n  learning_rate: [1e-3\n")
        args = ["--config", str(recipe)]
    elif args == "under_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"  # root ignores chmod; a path under a file is unwritable
        args = []
    elif args == "existing":
        out.mkdir()
        (out / "metrics.jsonl").write_text("{}\n")
        args = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res, cpu = run_cpu_timed(_cli(*TINY, "--train.output_dir", str(out), *args), cwd=ROOT,
                             timeout=60, env=env)
    assert res.returncode == 2, res.stderr[-2000:]
    assert message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert cpu < 5, f"{cpu:.1f} CPU s"
    assert not (out / "checkpoints").exists()
