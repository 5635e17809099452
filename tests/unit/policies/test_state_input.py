"""``policy.state_input: embedding``: the state projected into the prompt's last token
embedding (OpenVLA-OFT / pi0 style) instead of written as binned numbers, on the real tiny
PaliGemma VLA."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import make_obs, make_policy

from vlarl.policies import TokenVLAConfig, build_policy, load_policy
from vlarl.policies.token_vla.state_input import StateProjector, added_at
from vlarl.types import Obs


def _with_state(obs: Obs, state: torch.Tensor) -> Obs:
    return dataclasses.replace(obs, state=state)


def test_projector_scales_on_the_range_pads_and_starts_at_zero():
    proj = StateProjector(4, 8, [0.0, 0.0, -1.0, -1.0], [2.0, 2.0, 1.0, 1.0])
    out = proj(torch.tensor([[1.0, 2.0, 0.0], [9.0, 0.0, 1.0]]))  # D=3 < width 4: zero-padded
    assert out.shape == (2, 8) and out.abs().max().item() == 0.0  # zero output layer
    seen = []
    proj.net[0].register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    proj(torch.tensor([[1.0, 2.0, 0.0], [9.0, 0.0, 1.0]]))
    # (x - low) / span * 2 - 1, clipped at +-1.5; the padded 4th dim is 0 -> 0 on [-1, 1]
    assert seen[0].tolist() == [[0.0, 1.0, 0.0, 0.0], [1.5, -1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="D=5 > the policy's state width 4"):
        proj(torch.zeros(1, 5))


def test_added_at_touches_one_column_and_leaves_no_hook():
    emb = torch.nn.Embedding(10, 3)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    base = emb(ids)
    vec = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]])
    with added_at(emb, 2, vec):
        out = emb(ids)
        step = emb(ids[:, :1])  # a one-token decoding step never reaches column 2
    assert torch.equal(out[:, :2], base[:, :2]) and torch.equal(out[:, 2], base[:, 2] + vec)
    assert torch.equal(step, base[:, :1])
    assert not emb._forward_hooks and torch.equal(emb(ids), base)


def test_embedding_state_reads_the_state_and_act_matches_evaluate(tmp_path):
    policy = make_policy(state_input="embedding", value_head=False, use_lora=False)
    obs = make_obs(2)
    prompts = policy.prompts(obs)
    assert all(p.endswith(" state:") for p in prompts)
    other = _with_state(obs, obs.state + 1.0)
    stored = policy.act(obs, generator=torch.Generator().manual_seed(0)).stored
    lp0 = policy.evaluate(obs, stored)[0]
    # zero-initialised projector: the state does not matter yet
    assert torch.equal(policy.evaluate(other, stored)[0], lp0)
    torch.nn.init.normal_(policy.state_proj.net[2].weight, std=0.5)
    lp1, lp1_other = policy.evaluate(obs, stored)[0], policy.evaluate(other, stored)[0]
    assert (lp1 - lp1_other).abs().max().item() > 1e-3  # now it does
    # act and evaluate compute the same log-prob (the ratio PPO/GRPO start from is 1)
    out = policy.act(obs, generator=torch.Generator().manual_seed(1))
    assert (policy.evaluate(obs, out.stored)[0] - out.log_probs).abs().max().item() < 1e-5
    # SFT trains the projector with the actor
    assert any(p is policy.state_proj.net[0].weight for p in policy.policy_parameters())

    policy.save_pretrained(tmp_path / "sft")
    again = load_policy(tmp_path / "sft")
    assert again.cfg.state_input == "embedding"
    assert torch.equal(again.evaluate(obs, stored)[0], lp1)
    # RL with LoRA from it: the trained projector is part of the frozen base
    rl = build_policy(dataclasses.replace(again.cfg, path=str(tmp_path / "sft"), use_lora=True))
    assert not any(p.requires_grad for p in rl.state_proj.parameters())
    assert (rl.evaluate(obs, stored)[0] - lp1).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match=r"policy\.state_input='text' differs .*"
                                         r"state_input='embedding'"):
        load_policy(tmp_path / "sft", state_input="text")


def test_text_state_checkpoint_refuses_an_embedding_run(tmp_path):
    make_policy(state_input="text", value_head=False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"policy\.state_input='embedding' differs .*"
                                         r"state_input='text'"):
        load_policy(tmp_path, state_input="embedding")


def test_embedding_is_the_default_and_older_checkpoints_still_read_text(tmp_path):
    """A fresh token VLA reads the state as an embedding; a checkpoint saved before
    ``state_input`` existed (no such key in its ``vlarl_policy.json``) was trained on the state
    as text and loads as text, and a run config that leaves the new default is refused with
    the value to write."""
    import json

    from vlarl.policies.saving import POLICY_FILE

    assert TokenVLAConfig().state_input == "embedding"
    fresh = make_policy(value_head=False)
    assert fresh.state_proj is not None and fresh.prompts(make_obs(1))[0].endswith(" state:")
    make_policy(state_input="text", value_head=False).save_pretrained(tmp_path)
    meta_file = tmp_path / POLICY_FILE
    meta = json.loads(meta_file.read_text())
    del meta["config"]["state_input"]
    meta_file.write_text(json.dumps(meta))
    old = load_policy(tmp_path)
    assert old.cfg.state_input == "text" and old.state_proj is None
    assert " state: " in old.prompts(make_obs(1))[0]
    with pytest.raises(ValueError, match=r"policy\.state_input='embedding' differs .*"
                                         r"state_input='text'.*set policy\.state_input: \"text\""):
        build_policy(TokenVLAConfig(path=str(tmp_path), chunk_size=old.cfg.chunk_size,
                                  action_dim=old.cfg.action_dim))
