"""Privileged simulator state (``env.privileged_state``), the state-only env (``obs_mode:
state``) and the asymmetric critic (``policy.critic_input: privileged``) on real parts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import tiny_env_config

from vlarl.config import Config, ConfigError, EnvConfig, load_config
from vlarl.envs import make_env
from vlarl.policies import TokenVLAConfig

P = 71  # PushCube: get_state() 70 values (table, cube, goal: 13 each; panda: 31) + elapsed


def _env_cfg(**kw) -> EnvConfig:
    return tiny_env_config(**{"privileged_state": True, **kw})


def test_privileged_state_is_sim_state_plus_elapsed_and_final_obs_keeps_it():
    with make_env(_env_cfg()) as env:
        obs = env.reset([3])
        assert obs.privileged is not None and obs.privileged.shape == (1, P)
        assert obs.privileged[0, -1].item() == 0.0
        cube = obs.privileged[0, 13:16].clone()  # the cube's position in get_state()
        step = env.step_chunk(torch.zeros(1, 4, 7))
        assert step.obs.privileged[0, -1].item() == pytest.approx(4 / 8)
        step = env.step_chunk(torch.zeros(1, 4, 7))  # 8 steps: truncated, auto-reset
        assert bool(step.truncated[0])
        assert step.final_obs.privileged[0, -1].item() == pytest.approx(1.0)  # true last obs
        assert step.obs.privileged[0, -1].item() == 0.0  # the new episode
        again = env.reset([3])
        assert torch.equal(again.privileged[0, 13:16], cube)
        other = env.reset([4])
        assert not torch.allclose(other.privileged[0, 13:16], cube)


def test_worker_envs_carry_privileged_state_and_default_env_has_none():
    with make_env(_env_cfg(num_envs=2, backend="cpu")) as env:
        obs = env.reset([5, 6])
        assert obs.privileged.shape == (2, P)
        step = env.step_chunk(torch.zeros(2, 4, 7))
        assert step.obs.privileged.shape == (2, P) and step.final_obs.privileged.shape == (2, P)
    with make_env(_env_cfg(privileged_state=False)) as env:
        assert env.reset([5]).privileged is None


def test_state_obs_mode_renders_nothing_and_sees_the_cube():
    with make_env(_env_cfg(obs_mode="state")) as env, \
            make_env(_env_cfg()) as rgb:
        obs, ref = env.reset([3]), rgb.reset([3])
        assert obs.images.shape == (1, 0, 32, 32, 3)
        assert obs.privileged.shape == (1, P)
        # ManiSkill's state observation: agent (qpos, qvel) + tcp pose + goal + cube pose
        assert obs.state.shape[1] > ref.state.shape[1]
        assert torch.equal(obs.state[0, :9], ref.state[0, :9])  # same qpos
        assert torch.allclose(obs.privileged, ref.privileged)   # same seeded scene
        with pytest.raises(RuntimeError, match="obs_mode=state"):
            env.render_frames()


def test_config_switches_privileged_state_on_and_names_bad_keys():
    cfg = load_config(None, ["--policy.critic_input", "privileged"])
    assert cfg.env.privileged_state is True
    assert load_config(None, []).env.privileged_state is False
    with pytest.raises(ConfigError, match="policy.critic_input"):
        load_config(None, ["--policy.critic_input", "state"])
    with pytest.raises(ConfigError, match="value_head"):
        load_config(None, ["--policy.critic_input", "privileged", "--policy.value_head", "false"])
    with pytest.raises(ConfigError, match="env.obs_mode"):
        load_config(None, ["--env.obs_mode", "depth"])


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    from vlarl.policies import build_policy

    torch.manual_seed(0)
    feat = build_policy(TokenVLAConfig(chunk_size=2, action_bins=16))
    path = tmp_path_factory.mktemp("feat")
    feat.save_pretrained(path)
    priv = build_policy(TokenVLAConfig(path=str(path), chunk_size=2, action_bins=16,
                                     critic_input="privileged"))
    return feat, priv, path


def test_privileged_critic_reads_only_the_sim_state(policies, tmp_path):
    from vlarl.policies import build_policy

    _, priv, _ = policies
    with make_env(_env_cfg(image_size=64)) as env:
        obs = env.reset([3])
    obs2 = dataclasses.replace(obs, images=255 - obs.images, instructions=["push it"])
    # loaded from a features-critic checkpoint: a fresh critic (zero last layer -> V = 0)
    assert torch.equal(priv.value(obs), torch.zeros(1))
    with torch.no_grad():
        priv.value_head.net[-1].bias.fill_(0.5)
        priv.value_head.net[-1].weight.normal_(0, 0.1)
    v = priv.value(obs)
    assert torch.equal(priv.value(obs2), v)  # images and words do not enter the critic
    out = priv.act(obs, deterministic=True)
    _, _, v_eval = priv.evaluate(obs, out.stored)
    assert torch.allclose(out.values, v, atol=1e-6) and torch.allclose(v_eval, v, atol=1e-6)
    moved = dataclasses.replace(obs, privileged=obs.privileged + 0.1)
    assert not torch.allclose(priv.value(moved), v)
    # eval envs give no privileged state: act still works, without values; value() refuses
    bare = dataclasses.replace(obs, privileged=None)
    assert priv.act(bare, deterministic=True).values is None
    with pytest.raises(ValueError, match="env.privileged_state"):
        priv.value(bare)
    # the value loss reaches the critic only, not the adapters
    priv.zero_grad()
    _, _, v_eval = priv.evaluate(obs, out.stored)
    v_eval.sum().backward()
    grads = {n: p.grad for n, p in priv.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "value_head" in n)
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if "value_head" not in n)
    priv.zero_grad()
    # save -> load keeps the privileged critic
    priv.save_pretrained(tmp_path / "priv")
    back = build_policy(TokenVLAConfig(path=str(tmp_path / "priv"), chunk_size=2, action_bins=16,
                                     critic_input="privileged"))
    assert torch.equal(back.value(obs), v)
    with pytest.raises(ValueError, match="privileged_dim"):
        priv.value(dataclasses.replace(obs, privileged=torch.zeros(1, 200)))


@pytest.mark.slow
def test_ppo_with_privileged_critic_trains_the_critic(tmp_path):
    """Two PPO updates on the real env: the critic's parameters move, the values change."""
    from vlarl.checkpoint import load
    from vlarl.trainer import train

    cfg: Config = load_config(None, [
        "--env.task", "PushCube-v1", "--env.backend", "inline", "--env.num_envs", "1",
        "--env.image_size", "32", "--env.max_episode_steps", "8",
        "--env.reward_mode", "normalized_dense", "--policy.chunk_size", "4",
        "--policy.action_bins", "16", "--policy.critic_input", "privileged",
        "--train.rollout_steps", "4", "--train.num_updates", "2", "--algo.num_mini_batches", "1",
        "--algo.critic_warmup_updates", "1", "--train.save_every", "1",
        "--train.value_learning_rate", "1e-2", "--train.output_dir", str(tmp_path / "run")])
    train(cfg)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2
    a = load(tmp_path / "run" / "checkpoints" / "update_000001").tensors["trainable"]
    b = load(tmp_path / "run" / "checkpoints" / "update_000002").tensors["trainable"]
    crit = [k for k in a if "value_head" in k]
    assert crit and any(not torch.equal(a[k], b[k]) for k in crit)
    # the privileged critic is 71 -> 256 -> 256 -> 1 (zero-padded to 128 inputs)
    assert any(a[k].shape == (256, 128) for k in crit)
