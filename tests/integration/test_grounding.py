"""Grounding pre-training (sft.grounding_*): real PickCube resets, the tiny token VLA, run_sft."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import A, K, demo_config, make_obs, make_policy, session_cache

from vlarl.config import ConfigError
from vlarl.data import read_info
from vlarl.methods.grounding import r2_score, reset_layouts, standardize
from vlarl.methods.sft import (
    DONE_FILE,
    GROUNDING_METRICS_FILE,
    METRICS_FILE,
    describe,
    run_sft,
    sft_key,
)


def test_standardize_zeroes_constant_dimensions() -> None:
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    z = standardize(x, x.mean(0), x.std(0))
    assert torch.allclose(z[:, 0], torch.tensor([-0.70710677, 0.70710677]))
    assert torch.equal(z[:, 1], torch.zeros(2))


def test_r2_pools_the_varying_dimensions() -> None:
    y = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    assert r2_score(y, y) == 1.0
    assert r2_score(y.mean(0).expand_as(y), y) == 0.0  # the mean predictor explains nothing
    off = y + torch.tensor([0.5, 7.0])  # the constant column's error is not counted
    assert r2_score(off, y) == pytest.approx(1 - 4 * 0.25 / 5.0)
    assert r2_score(y, y[:, 1:]) != r2_score(y, y[:, 1:])  # nothing varies: nan


@pytest.mark.slow
def test_layouts_follow_the_seed() -> None:
    cfg = demo_config()
    cfg.env.num_workers = 2  # the run's worker layout does not reach the one-env scene simulator
    obs, layout = reset_layouts(cfg.env, [500_000, 500_001, 500_000])
    assert layout.shape == (3, 6)  # PickCube: cube xyz + goal_site xyz
    torch.testing.assert_close(layout[0], layout[2])  # the same seed, the same scene
    assert float((layout[0, :2] - layout[1, :2]).abs().max()) > 1e-3
    assert torch.equal(obs[0].images, obs[2].images) and not torch.equal(obs[0].images, obs[1].images)
    assert abs(float(layout[0, 2]) - 0.02) < 1e-3  # the cube rests on the table (half size 2 cm)


@pytest.mark.parametrize(("args", "match"), [
    (["--sft.grounding_scenes=-1"], "sft.grounding_scenes=-1 must be >= 0"),
    (["--sft.grounding_scenes", "16", "--sft.grounding_steps", "0"],
     "sft.grounding_steps=0 must be > 0"),
    (["--sft.grounding_scenes", "16", "--policy.name", "mlp_student"],
     "policy.name .with sft.grounding_scenes > 0.='mlp_student' is not allowed"),
    (["--sft.grounding_scenes", "16", "--data.extra_tasks", "[PushCube-v1]"],
     "data.extra_tasks=.'PushCube-v1'. is not allowed"),
])
def test_bad_grounding_settings_fail_at_start(args: list[str], match: str, tmp_path) -> None:
    from vlarl.config import load_config

    with pytest.raises(ConfigError, match=match):  # at load, or when the SFT run starts
        run_sft(load_config(None, [*args, "--sft.output_dir", str(tmp_path / "sft")]))
    assert not (tmp_path / "sft").exists()


def test_a_distillation_config_may_carry_the_grounding_stage() -> None:
    from vlarl.config import load_config

    cfg = load_config(None, ["--sft.grounding_scenes", "16", "--policy.name", "mlp_student"])
    assert cfg.sft.grounding_scenes == 16  # the quickstart's distill stage loads this config


@pytest.fixture(scope="module")
def env_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("VLARL_CACHE", str(session_cache(tmp_path_factory)))
    yield tmp_path_factory.mktemp("grounding")
    mp.undo()


@pytest.mark.slow
def test_run_sft_pretrains_grounding_and_saves_a_plain_policy(env_cache: Path) -> None:
    from vlarl.policies import load_policy

    cfg = demo_config()
    cfg.sft.output_dir = str(env_cache / "sft")
    cfg.sft.batch_size, cfg.sft.learning_rate, cfg.sft.lr_scheduler_type = 8, 1e-3, "constant"
    cfg.sft.grounding_scenes, cfg.sft.grounding_steps = 16, 12
    out = run_sft(cfg, max_steps=12)
    g = json.loads((out / DONE_FILE).read_text())["grounding"]
    assert (g["scenes"], g["heldout_scenes"], g["steps"]) == (16, 8, 12)
    losses = [json.loads(r)["loss"] for r in (out / GROUNDING_METRICS_FILE).read_text().splitlines()]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses  # the head learns
    assert len((out / METRICS_FILE).read_text().splitlines()) == 12
    assert set(g) >= {"heldout_r2", "heldout_r2_after_sft"}
    line = describe(out)  # what `vlarl sft` prints
    assert "grounding pre-training: 16 scenes, 12 steps" in line and "held-out R^2" in line
    policy = load_policy(out)  # an ordinary checkpoint: no grounding head inside
    assert not any("head" in n and "value" not in n and "lm_head" not in n
                   for n, _ in policy.named_parameters())
    done = json.loads((out / DONE_FILE).read_text())
    plain = copy.deepcopy(cfg)
    plain.sft.grounding_scenes = 0  # another checkpoint: the stage is part of the cache key
    assert sft_key(plain, "d", 12, 1) != sft_key(cfg, "d", 12, 1)
    assert done["key"] == sft_key(cfg, read_info(done["dataset"])["key"], 12, 1)


@pytest.mark.parametrize("state_input", ["embedding", "text"])
def test_sft_features_are_the_prompt_features_of_one_pass(state_input: str) -> None:
    policy = make_policy(state_input=state_input)
    obs = make_obs(3)
    actions = torch.rand(3, K, A) * 2 - 1
    with torch.no_grad():
        loss, feats = policy.sft_loss(obs, actions, features=True)
        torch.testing.assert_close(loss, policy.sft_loss(obs, actions))
        torch.testing.assert_close(feats, policy.prompt_features(obs), atol=1e-5, rtol=1e-4)
    assert feats.shape == (3, policy._base().config.get_text_config().hidden_size)
    assert float(feats.std(0).mean()) > 1e-3  # the rows differ: the features see the inputs
