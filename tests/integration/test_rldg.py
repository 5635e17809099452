"""RLDG pieces on real parts: the privileged (state-based) mlp_student, its PPO run in the
state env, BC warm start, eval's privileged switch, and ``collect`` with a policy expert."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_env_config

from vlarl.config import Config, ConfigError, EnvConfig, load_config
from vlarl.envs import make_env
from vlarl.policies import POLICIES, MLPStudentConfig, load_policy
from vlarl.policies.base import Policy
from vlarl.policies.mlp_student.modeling_mlp_student import MLPStudentPolicy
from vlarl.types import ActOutput, Obs

P = 71  # PushCube: get_state() (70) + elapsed fraction


def _env_cfg(**kw) -> EnvConfig:
    return tiny_env_config(**{"obs_mode": "state", "privileged_state": True, **kw})


@pytest.fixture(scope="module")
def state_obs() -> Obs:
    with make_env(_env_cfg()) as env:
        obs = env.reset([3])
        step = env.step_chunk(torch.zeros(1, 2, 7))
        return Obs.cat([obs, step.obs])


def _student(**kw) -> MLPStudentPolicy:
    torch.manual_seed(0)
    return MLPStudentPolicy(MLPStudentConfig(chunk_size=2, action_dim=7,
                                         student_input="privileged", **kw))


def test_privileged_student_reads_only_the_sim_state(state_obs, tmp_path):
    p = _student()
    assert state_obs.images.shape[1] == 0 and state_obs.privileged.shape == (2, P)
    assert p.needs_privileged_state and p.image_encoder is None
    with torch.no_grad():  # non-trivial actions and values
        p.action_mean.weight.normal_(0, 0.1)
        p.value_head.net[-1].weight.normal_(0, 0.1)
    out = p.act(state_obs, generator=torch.Generator().manual_seed(1))
    lp, _, v = p.evaluate(state_obs, out.stored)
    assert out.actions.shape == (2, 2, 7)
    assert torch.allclose(lp, out.log_probs, atol=1e-5) and torch.allclose(v, out.values, atol=1e-6)
    assert torch.allclose(p.value(state_obs), v, atol=1e-6) and not torch.equal(v, torch.zeros(2))
    # images, words and proprioception do not enter; the privileged state does
    other = Obs(torch.randint(0, 255, (2, 1, 32, 32, 3), dtype=torch.uint8),
                torch.randn(2, 40), ["pick up the cube", ""], state_obs.privileged)
    det = p.act(state_obs, deterministic=True)
    assert torch.equal(p.act(other, deterministic=True).actions, det.actions)
    moved = dataclasses.replace(state_obs, privileged=state_obs.privileged + 0.1)
    assert not torch.allclose(p.act(moved, deterministic=True).actions, det.actions)
    assert not torch.allclose(p.value(moved), v)
    # the critic is a separate network: the value loss does not reach the actor
    p.zero_grad()
    p.evaluate(state_obs, out.stored)[2].sum().backward()
    assert all(q.grad is None or q.grad.abs().sum() == 0 for q in p.policy_parameters())
    # save -> load: same actions, the input mode recorded and enforced
    p.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "vlarl_policy.json").read_text())
    assert meta["config"]["student_input"] == "privileged" and meta["config"]["privileged_dim"] == 128
    q = load_policy(tmp_path)
    assert q.needs_privileged_state
    assert torch.equal(q.act(state_obs, deterministic=True).actions, det.actions)
    assert torch.equal(q.value(state_obs), p.value(state_obs))
    with pytest.raises(ValueError, match="student_input=full differs"):
        load_policy(tmp_path, student_input="full")
    # refusals name the key
    with pytest.raises(ValueError, match="env.privileged_state"):
        p.act(dataclasses.replace(state_obs, privileged=None))
    with pytest.raises(ValueError, match="policy.privileged_dim=128"):
        p.act(dataclasses.replace(state_obs, privileged=torch.zeros(2, 200)))


def test_config_and_collect_refusals_name_the_key(tmp_path, no_env):
    from vlarl.data import collect_demos

    cfg = load_config(None, ["--policy.name", "mlp_student", "--policy.student_input", "privileged"])
    assert cfg.env.privileged_state is True
    with pytest.raises(ConfigError, match="policy.student_input='images'"):
        load_config(None, ["--policy.name", "mlp_student", "--policy.student_input", "images"])
    with pytest.raises(ConfigError, match=r"unknown key 'policy.student_input' for "
                                          r"policy.name='token_vla' \(it is a key of mlp_student\)"):
        load_config(None, ["--policy.student_input", "privileged"])
    with pytest.raises(ConfigError, match="data.expert"):
        load_config(None, ["--data.expert="])
    with pytest.raises(ValueError, match="policy.student_input='x'"):
        MLPStudentPolicy(MLPStudentConfig(student_input="x"))  # type: ignore[arg-type]
    cfg = load_config(None, ["--data.expert", str(tmp_path / "nope"),
                             "--data.dataset_dir", str(tmp_path / "d")])
    with pytest.raises(FileNotFoundError, match="data.expert="):
        collect_demos(cfg)
    cfg = load_config(None, ["--env.obs_mode", "state", "--data.dataset_dir", str(tmp_path / "d")])
    with pytest.raises(ValueError, match="env.obs_mode='state'"):
        collect_demos(cfg)


def test_bc_warm_start_then_ppo_on_the_state_env_then_eval_with_rgb(tmp_path):
    """BC on 2 scripted episodes -> 2 PPO updates in the camera-less env (actor and critic
    move) -> the exported expert evaluated in an RGB env, which eval gives privileged state."""
    from vlarl.checkpoint import load
    from vlarl.eval.evaluate import run_eval
    from vlarl.methods.rldg import bc_warm_start
    from vlarl.trainer import train

    args = ["--config", "recipes/cpu/rldg_expert.yaml", "--env.max_episode_steps", "20",
            "--env.image_size", "32", "--data.num_episodes", "2", "--distill.epochs", "2",
            "--train.rollout_steps", "8", "--train.num_updates", "2", "--train.save_every", "1",
            "--train.eval_every", "0", "--algo.num_mini_batches", "2",
            "--algo.critic_warmup_updates", "0", "--algo.target_kl", "null",
            "--train.output_dir", str(tmp_path / "run")]
    cfg: Config = load_config(args[1], args[2:])
    bc = bc_warm_start(cfg, tmp_path / "bc")
    report = json.loads((bc / "bc_report.json").read_text())
    assert report["solved"] == 2 and report["frames"] == 40  # 2 episodes of 20 steps (no termination)
    assert report["final_loss"] < report["first_loss"]
    cfg.policy.path = str(bc)
    train(cfg)
    a = load(tmp_path / "run" / "checkpoints" / "update_000001").tensors["trainable"]
    b = load(tmp_path / "run" / "checkpoints" / "update_000002").tensors["trainable"]
    assert any(k.startswith("value_head") for k in a) and "privileged_encoder.0.weight" in a
    assert not torch.equal(a["privileged_encoder.0.weight"], b["privileged_encoder.0.weight"])
    assert not torch.equal(a["value_head.net.0.weight"], b["value_head.net.0.weight"])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["update"] for x in lines] == [1, 2] and lines[-1]["rollout/env_steps"] == 8
    expert = tmp_path / "run" / "policy"
    assert load_policy(expert).needs_privileged_state
    ev = load_config(None, ["--env.task", "PushCube-v1", "--env.backend", "inline",
                            "--env.num_envs", "1", "--env.image_size", "32",
                            "--env.max_episode_steps", "8", "--eval.num_episodes", "2"])
    assert ev.env.obs_mode == "rgb" and not ev.env.privileged_state
    rep = run_eval([str(expert)], ev, tmp_path / "eval")
    assert rep["results"][0]["n"] == 2
    # vlarl diagnose gives it privileged state too, on every axis split
    from vlarl.eval.diagnose import run_diagnose

    ev.policy.path, ev.eval.num_episodes = str(expert), 1
    diag = run_diagnose(ev, tmp_path / "diagnose")
    assert len(diag["splits"]) >= 5 and {r["n"] for r in diag["splits"].values()} == {1}


# --------------------------------------------------------------------------- collect with a policy

class ReplayPolicy(Policy):
    """Replays a fixed action sequence in chunks of 3, indexed by the elapsed step it reads
    from ``Obs.privileged`` (so it needs privileged state, like a state-based expert)."""

    def __init__(self, actions: list[list[float]], max_steps: int):
        super().__init__()
        self.seq, self.max_steps = torch.tensor(actions), max_steps
        self.chunk_size, self.action_dim = 3, self.seq.shape[1]
        self.needs_privileged_state = True

    def act(self, obs, deterministic=False, generator=None):
        t = (obs.privileged[:, -1] * self.max_steps).round().long()
        idx = (t[:, None] + torch.arange(3)).clamp(max=len(self.seq) - 1)
        return ActOutput(self.seq[idx], torch.zeros(len(obs)), None, {})

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        Path(path, "vlarl_policy.json").write_text(json.dumps(
            {"policy": "test_replay", "actions": self.seq.tolist(), "max_steps": self.max_steps}))

    @classmethod
    def from_pretrained(cls, path, **overrides):
        d = json.loads(Path(path, "vlarl_policy.json").read_text())
        return cls(d["actions"], d["max_steps"])


if "test_replay" not in POLICIES:
    POLICIES.register("test_replay")(ReplayPolicy)


def test_collect_with_a_policy_expert_keeps_only_successes(tmp_path, monkeypatch):
    """The scripted expert's actions on seed S+1, replayed by a policy in chunks of 3, solve
    seed S+1 again (same physics) but not seed S: collecting 1 episode from seed S drops
    (and counts) the failure on S and writes S+1's episode with exactly those actions, one
    row per control step with its image."""
    from vlarl.data import collect_demos, dataset_key, load_demos, read_info

    monkeypatch.setenv("VLARL_CACHE", str(tmp_path / "cache"))
    args = ["--env.task", "PushCube-v1", "--env.image_size", "32", "--env.max_episode_steps",
            "20", "--data.num_workers", "1", "--data.num_episodes", "1"]
    cfg = load_config(None, [*args, "--data.seed", "10001"])
    scripted = load_demos(collect_demos(cfg)).with_format("numpy")
    acts = np.asarray(scripted["action"])
    assert len(acts) >= 5
    ReplayPolicy(acts.tolist(), 20).save_pretrained(tmp_path / "replay")
    cfg_p = load_config(None, [*args, "--data.seed", "10000", "--data.expert",
                               str(tmp_path / "replay")])
    cfg_s = load_config(None, [*args, "--data.seed", "10000"])
    assert dataset_key(cfg_p) != dataset_key(cfg_s)  # the expert is part of the key
    out = collect_demos(cfg_p)
    info = read_info(out)
    st = info["collection"]
    assert st["expert"] == str(tmp_path / "replay") == info["data_config"]["expert"]
    assert (st["episodes_attempted"], st["episodes_failed"], info["total_episodes"]) == (2, 1, 1)
    ds = load_demos(out).with_format("numpy")
    assert set(np.asarray(ds["episode_index"]).tolist()) == {0}
    np.testing.assert_array_equal(np.asarray(ds["action"]), acts)  # every executed action
    assert np.asarray(ds["seed"])[0] == 10001 and info["total_frames"] == len(acts)
    assert np.asarray(ds["success"])[-1] and np.asarray(ds["done"])[-1]
    img = ds[3]["image"]
    assert img.shape == (32, 32, 3) and img.std() > 0
    assert np.asarray(ds["state"]).shape[1] == info["state_dim"] == 16  # proprioception only
