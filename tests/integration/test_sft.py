"""SFT warm start on real PickCube expert demos with the tiny token VLA (real transformers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import demo_config, session_cache

from vlarl.config import Config
from vlarl.data import ChunkDataset, collate_chunks, collect_demos, load_demos
from vlarl.methods.sft import DONE_FILE, METRICS_FILE, fit_sft, run_sft, sft_key

POLICY = os.environ.get("VLARL_TEST_SFT_POLICY", "token_vla")


def sft_config(tmp: Path) -> Config:
    """The demos of tests/unit/data/test_data.py (shared through the session's VLARL_CACHE)."""
    cfg = demo_config()
    cfg.policy.name = POLICY
    cfg.sft.output_dir = str(tmp / "sft")
    cfg.sft.batch_size, cfg.sft.learning_rate, cfg.sft.lr_scheduler_type = 4, 1e-3, "constant"
    return cfg


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("VLARL_CACHE", str(session_cache(tmp_path_factory)))
    yield tmp_path_factory.mktemp("sft")
    mp.undo()


@pytest.mark.slow
def test_loss_decreases_and_checkpoint_reloads(env_cache: Path) -> None:
    from vlarl.policies import build_policy, load_policy

    cfg = sft_config(env_cache)
    policy = build_policy(cfg.policy)
    # 8 steps of episode 0: a tiny set the model can start to memorise in a few updates
    chunks = ChunkDataset(load_demos(collect_demos(cfg)).select(range(8)), policy.chunk_size)
    metrics = env_cache / "fit.jsonl"
    stats = fit_sft(policy, chunks, cfg, max_steps=8, metrics_path=metrics)
    losses = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    assert len(losses) == stats["steps"] == 8 and stats["epochs"] == 4
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert stats["final_loss"] == losses[-1]

    policy.save_pretrained(env_cache / "ckpt")
    reloaded = load_policy(env_cache / "ckpt")
    obs, _ = collate_chunks([chunks[i] for i in range(4)])
    with torch.no_grad():
        a = policy.act(obs, deterministic=True).actions
        b = reloaded.act(obs, deterministic=True).actions
    assert a.shape == (4, policy.chunk_size, 7)
    torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_run_sft_writes_and_reuses_checkpoint(env_cache: Path) -> None:
    from vlarl.policies import load_policy

    cfg = sft_config(env_cache)
    out = run_sft(cfg, max_steps=2)
    done = json.loads((out / DONE_FILE).read_text())
    assert done["steps"] == 2 and len((out / METRICS_FILE).read_text().splitlines()) == 2
    assert load_policy(out).action_dim == 7
    assert load_policy(out).cfg.state_sizes == [20]  # PickCube's state: checked at RL / eval
    before = (out / DONE_FILE).stat().st_mtime_ns
    assert run_sft(cfg, max_steps=2) == out  # same config: cached, not retrained
    assert (out / DONE_FILE).stat().st_mtime_ns == before
    other = sft_config(env_cache)
    other.sft.learning_rate = 5e-4  # another config would retrain
    assert sft_key(other, done["key"], 2, 1) != sft_key(cfg, done["key"], 2, 1)


@pytest.mark.slow
def test_action_dim_mismatch_names_both(env_cache: Path) -> None:
    cfg = sft_config(env_cache)
    cfg.policy.action_dim = 6
    with pytest.raises(ValueError, match=r"action_dim=7 but the policy has action_dim=6"):
        run_sft(cfg, max_steps=1)


@pytest.mark.slow
def test_two_sft_runs_of_one_config_give_the_same_weights(env_cache: Path) -> None:
    """The fresh modules SFT builds (the state projector) are drawn from ``sft.seed``: two runs
    of one config give bit-equal metrics and weights, whatever ran before in the process."""
    from safetensors.torch import load_file

    cfg = sft_config(env_cache)
    outs = []
    for i in range(2):
        cfg.sft.output_dir = str(env_cache / f"sft_repeat{i}")
        torch.rand(i + 1)  # the global generator is elsewhere for each run
        outs.append(run_sft(cfg, max_steps=2))
    a, b = ((o / METRICS_FILE).read_text() for o in outs)
    strip = [json.dumps({k: v for k, v in json.loads(line).items() if k != "time_s"})
             for text in (a, b) for line in text.splitlines()]
    assert strip[:2] == strip[2:]  # loss and gradient norm of both steps
    heads = [load_file(str(o / "heads.safetensors")) for o in outs]
    assert heads[0].keys() and all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


@pytest.mark.slow
def test_multi_task_sft_pads_the_shorter_state(env_cache: Path) -> None:
    """data.extra_tasks: PickCube (state D=20) + PushCube (D=16) demos train one policy; its
    state range covers 20 dims, PushCube states are zero-padded in training batches and at
    inference, and the run's SFT key differs from the single-task one."""
    from vlarl.config import ConfigError
    from vlarl.methods.sft import demo_dirs
    from vlarl.policies import load_policy
    from vlarl.policies.common import pad_state

    cfg = sft_config(env_cache)
    cfg.policy.state_input = "text"  # the padding is visible in the prompt's state bins
    cfg.sft.output_dir = str(env_cache / "sft_multi")
    cfg.data.extra_tasks = ["PushCube-v1"]
    cfg.validate()
    pick, push = demo_dirs(cfg)
    out = run_sft(cfg, max_steps=2)
    done = json.loads((out / DONE_FILE).read_text())
    assert done["dataset"] == [str(pick), str(push)] and done["steps"] == 2
    single = json.loads((pick / "meta/info.json").read_text())["key"]
    assert done["key"] != sft_key(sft_config(env_cache), single, 2, 1)

    policy = load_policy(out)
    assert len(policy.cfg.state_low) == 20 and policy.cfg.state_sizes == [16, 20]
    push_rows = ChunkDataset(load_demos(push).select(range(2)), policy.chunk_size)
    pick_rows = ChunkDataset(load_demos(pick).select(range(2)), policy.chunk_size)
    obs, _ = collate_chunks([push_rows[0], pick_rows[0]])  # a mixed batch
    assert obs.state.shape == (2, 20) and obs.state[0, 16:].abs().sum() == 0
    push_obs, _ = collate_chunks([push_rows[0], push_rows[1]])
    assert push_obs.state.shape == (2, 16)
    text = policy.prompts(push_obs)[0]
    assert len(text.split(" state: ")[1].split()) == 20  # padded to the policy's width
    zero_bin = policy.state_tokenizer.tokenize(torch.zeros(20))[16:].tolist()
    assert text.split()[-4:] == [str(b) for b in zero_bin]
    with torch.no_grad():
        assert policy.act(push_obs, deterministic=True).actions.shape == (2, policy.chunk_size, 7)
    with pytest.raises(ValueError, match="D=21 > the policy's state width 20"):
        pad_state(torch.zeros(21), 20, "fix")
    cfg.data.extra_tasks = ["PushCube-v1", "PickCube-v1"]  # env.task listed too: not twice
    assert demo_dirs(cfg) == [pick, push]
    cfg.data.extra_tasks = ["NoSuchTask-v1"]
    with pytest.raises(ConfigError, match="data.extra_tasks: 'NoSuchTask-v1' is not allowed"):
        demo_dirs(cfg)


@pytest.mark.slow
def test_state_noise_is_scaled_per_dimension_and_changes_training(env_cache: Path) -> None:
    """sft.state_noise: noise of std state_noise x each dimension's std over the demos (0 on
    the zero padding of a shorter state), labels untouched, and a different SFT run."""
    from vlarl.config import ConfigError
    from vlarl.methods.sft import noisy_state, state_std

    cfg = sft_config(env_cache)
    cfg.policy.state_input = "text"  # the noise shows in the first loss (a fresh projector reads 0)
    demos = load_demos(collect_demos(cfg))
    std = state_std([demos])
    states = torch.from_numpy(np.asarray(demos.with_format("numpy")["state"], dtype=np.float64))
    torch.testing.assert_close(std, states.std(0).float())
    assert std.shape == (20,) and (std > 0).sum() >= 10
    obs, _ = collate_chunks([ChunkDataset(demos, 4)[0]] * 4000)
    torch.manual_seed(0)
    noisy = noisy_state(obs, 0.2 * torch.cat([std[:16], torch.zeros(4)]))
    delta = noisy.state - obs.state
    torch.testing.assert_close(delta[:, :16].std(0), 0.2 * std[:16], rtol=0.06, atol=1e-6)
    assert delta[:, 16:].abs().max() == 0 and noisy.images is obs.images

    cfg.sft.output_dir = str(env_cache / "sft_plain")
    plain = json.loads((run_sft(cfg, max_steps=2) / DONE_FILE).read_text())
    cfg.sft.state_noise, cfg.sft.output_dir = 0.5, str(env_cache / "sft_noisy")
    noised = json.loads((run_sft(cfg, max_steps=2) / DONE_FILE).read_text())
    assert noised["key"] != plain["key"] and noised["first_loss"] != plain["first_loss"]
    cfg.sft.state_noise = -0.1
    with pytest.raises(ConfigError, match=r"sft.state_noise"):
        cfg.validate()
