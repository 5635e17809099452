"""MLP student policy: real torch model, random-image observations (no env needed)."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from vlarl.policies import MLPStudentConfig, load_policy
from vlarl.policies.mlp_student.modeling_mlp_student import (
    LOG_STD_INIT,
    MLPStudentPolicy,
    gaussian_entropy,
    hash_words,
    is_student_dir,
)
from vlarl.types import Obs

K, A = 4, 7



def make_obs(n: int = 3, seed: int = 0, size: int = 32, state_dim: int = 16) -> Obs:
    g = torch.Generator().manual_seed(seed)
    words = ["pick up the red cube", "push the cube to the goal", "stack the green cube"]
    return Obs(images=torch.randint(0, 256, (n, 2, size, size, 3), dtype=torch.uint8, generator=g),
               state=torch.randn(n, state_dim, generator=g),
               instructions=[words[i % len(words)] for i in range(n)])


def make_student(**kw) -> MLPStudentPolicy:
    torch.manual_seed(0)
    return MLPStudentPolicy(MLPStudentConfig(chunk_size=K, action_dim=A, **kw))


def test_shapes_params_and_clipping():
    p = make_student()
    n_params = sum(x.numel() for x in p.parameters())
    assert 100_000 <= n_params <= 1_000_000, n_params
    p.log_std.data.fill_(1.0)  # wide noise: samples must still be clipped to the action box
    out = p.act(make_obs(5), generator=torch.Generator().manual_seed(0))
    assert out.actions.shape == (5, K, A) and out.actions.dtype == torch.float32
    assert float(out.actions.abs().max()) <= 1.0
    assert float(out.stored["raw_actions"].abs().max()) > 1.0  # the unclipped sample is kept
    assert out.log_probs.shape == (5,) and out.values.shape == (5,)
    assert torch.equal(out.values, torch.zeros(5))  # ValueHead's last layer starts at zero


def test_act_evaluate_log_prob_consistency():
    p = make_student()
    obs = make_obs(4)
    out = p.act(obs, generator=torch.Generator().manual_seed(1))
    lp, ent, v = p.evaluate(obs, out.stored)
    assert torch.allclose(lp, out.log_probs, atol=1e-5)
    assert torch.allclose(v, out.values, atol=1e-6)
    want = gaussian_entropy(torch.full((K * A,), LOG_STD_INIT))
    assert torch.allclose(ent, torch.full((4,), want), atol=1e-4)
    # Same generator seed -> same sample; deterministic -> the clipped mean, every time.
    again = p.act(obs, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.actions, out.actions)
    d1, d2 = p.act(obs, deterministic=True), p.act(obs, deterministic=True)
    assert torch.equal(d1.actions, d2.actions)
    with torch.no_grad():
        assert torch.allclose(d1.actions, p.predict(obs).clamp(-1, 1))
    lp_det, _, _ = p.evaluate(obs, d1.stored)
    assert torch.allclose(lp_det, d1.log_probs, atol=1e-5)


def test_gradients_reach_actor_and_critic_separately():
    p = make_student()
    obs = make_obs(3)
    out = p.act(obs, generator=torch.Generator().manual_seed(2))
    lp, _, _ = p.evaluate(obs, out.stored)
    lp.sum().backward()
    assert p.log_std.grad is not None and float(p.log_std.grad.abs().sum()) > 0
    assert all(q.grad is None for q in p.value_parameters())
    p.zero_grad()
    _, _, v = p.evaluate(obs, out.stored)
    (v - 1.0).pow(2).mean().backward()
    assert p.value_head.net[2].weight.grad.abs().sum() > 0
    names = {id(q) for q in p.value_parameters()}
    assert names and not names & {id(q) for q in p.policy_parameters()}


def test_sft_loss_is_mse_and_regression_fits():
    p = make_student()
    obs = make_obs(6)
    target = torch.rand(6, K, A, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        want = (p.predict(obs) - target).pow(2).mean()
    first = p.sft_loss(obs, target)
    assert torch.allclose(first, want)
    opt = torch.optim.Adam(p.policy_parameters(), lr=5e-3)
    for _ in range(30):
        loss = p.sft_loss(obs, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first.item(), (first.item(), loss.item())


def test_save_load_identical_actions(tmp_path):
    p = make_student()
    obs = make_obs(3)
    with torch.no_grad():
        p.log_std.add_(0.3)  # non-default weights everywhere that matter
        p.action_mean.weight.add_(0.05)
    p.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "vlarl_policy.json").read_text())
    assert meta["policy"] == "mlp_student" and meta["config"]["chunk_size"] == K
    assert meta["student"] == {"state_dim": 32, "vocab_size": 4096, "hidden": 256}
    assert (tmp_path / "model.safetensors").is_file() and is_student_dir(tmp_path)
    q = load_policy(tmp_path)
    assert isinstance(q, MLPStudentPolicy)
    assert torch.equal(q.act(obs, deterministic=True).actions, p.act(obs, deterministic=True).actions)
    a = p.act(obs, generator=torch.Generator().manual_seed(5))
    b = q.act(obs, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.log_probs, b.log_probs)
    assert load_policy(tmp_path, value_head=False).value_head is None
    with pytest.raises(ValueError, match="chunk_size=2 differs"):
        load_policy(tmp_path, chunk_size=2)
    assert "action_bins" not in meta["config"]  # its own config's fields only


def test_a_checkpoint_written_with_every_policys_fields_still_loads(tmp_path):
    """Checkpoints saved when one config class held all three policies' fields carry the
    others' keys: they are skipped on load, and an override of one is refused naming its owner."""
    make_student().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "vlarl_policy.json").read_text())
    meta["config"].update(action_bins=256, decoding="autoregressive", num_inference_steps=4,
                          noise_level=0.3, temperature=1.0)
    (tmp_path / "vlarl_policy.json").write_text(json.dumps(meta))
    q = load_policy(tmp_path)
    assert type(q.cfg) is MLPStudentConfig and q.cfg.chunk_size == K
    assert not hasattr(q.cfg, "action_bins")
    from vlarl.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'policy.decoding' for "
                                          r"policy.name='mlp_student' \(it is a key of token_vla\)"):
        load_policy(tmp_path, decoding="parallel")


def test_instruction_hashing_is_stable_and_informative():
    ids = hash_words("Pick up the RED cube.")
    assert ids == [zlib.crc32(w.encode()) % 4096 for w in ("pick", "up", "the", "red", "cube")]
    p = make_student()
    obs = make_obs(2)
    obs.instructions = ["pick up the red cube", "pick up the blue cube"]
    obs.images[1], obs.state[1] = obs.images[0], obs.state[0]
    with torch.no_grad():
        f = p.features(obs)
        empty = p.features(Obs(obs.images[:1], obs.state[:1], [""]))
    assert not torch.allclose(f[0], f[1])  # only the instruction differs
    assert torch.isfinite(empty).all()  # an empty instruction is an all-zero embedding


def test_bad_inputs_named():
    p = make_student()
    with pytest.raises(ValueError, match="D=40 > the policy's state width 32; build it with MLPStudentPolicy"):
        p.act(make_obs(1, state_dim=40))
    with pytest.raises(ValueError, match=r"must be \[N, 4, 7\]"):
        p.sft_loss(make_obs(2), torch.zeros(2, 3, 7))
    with pytest.raises(ValueError, match="policy.chunk_size=0"):
        MLPStudentPolicy(MLPStudentConfig(chunk_size=0))
    q = make_student(use_state=False)  # a stateless student ignores the state entirely
    assert q.act(make_obs(1, state_dim=40), deterministic=True).actions.shape == (1, K, A)
