"""token_vla on image-text-to-text families other than PaliGemma (tiny, random, offline).

Per backbone (``policy.tiny``): chunk k=2, A=7 -> 14 action tokens, batch of 3, LoRA, fp32.
``tests/unit/policies/test_token_vla.py`` covers PaliGemma the same way.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_obs, trained_step

from vlarl.policies import TokenVLAConfig, build_policy, load_policy

K, A = 2, 7
BACKBONES = ["idefics3", "llava"]
CLASSES = {"idefics3": "Idefics3ForConditionalGeneration",
           "llava": "LlavaForConditionalGeneration"}


def make_policy(tiny: str, **kw):
    return build_policy(TokenVLAConfig(chunk_size=K, action_dim=A, tiny=tiny, **kw))


@pytest.mark.parametrize("tiny", BACKBONES)
@pytest.mark.parametrize("decoding", ["autoregressive", "parallel"])
def test_act_matches_evaluate(tiny, decoding):
    policy = make_policy(tiny, decoding=decoding)
    assert type(policy._base()).__name__ == CLASSES[tiny]
    obs = make_obs()
    out = policy.act(obs, generator=torch.Generator().manual_seed(1))
    assert out.actions.shape == (3, K, A) and float(out.actions.abs().max()) <= 1.0
    tok = out.stored["tokens"]
    assert tok.shape == (3, K * A) and 0 <= int(tok.min()) and int(tok.max()) < 256
    lp, ent, v = policy.evaluate(obs, out.stored)
    assert (lp - out.log_probs).abs().max().item() < 1e-5
    assert torch.allclose(v, out.values, atol=1e-6)
    # Random init: per-token entropy near log(256) = 5.545, 14 tokens.
    assert 14 * 5.0 < float(ent.min()) <= 14 * math.log(256) + 1e-3
    # A row alone (no padding) gets the log-prob it had in the padded batch.
    single = policy.evaluate(obs.index([1]), {"tokens": tok[1:2]})[0]
    assert abs(single.item() - out.log_probs[1].item()) < 1e-4


@pytest.mark.parametrize("tiny", BACKBONES)
def test_lora_step_changes_only_adapters_and_heads(tiny):
    policy = make_policy(tiny)
    base = make_policy(tiny, use_lora=False, value_head=False)
    obs = make_obs()
    out = policy.act(obs, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base_lp = base.evaluate(obs, out.stored)[0]
        cur_lp = policy.evaluate(obs, out.stored)[0]
    assert (cur_lp - base_lp).abs().max().item() < 1e-6  # LoRA B = 0: a no-op before training
    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    assert trainable and all("lora_" in n or "value_head" in n or "state_proj" in n
               for n in trainable)
    trained_step(policy, obs, out.stored, steps=2)  # step 1 moves B only, step 2 the rest
    assert all(not torch.equal(p, trainable[n]) for n, p in policy.named_parameters()
               if n in trainable)
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if n in frozen)
    with torch.no_grad():
        with policy.reference():
            ref_lp = policy.evaluate(obs, out.stored)[0]
        after = policy.evaluate(obs, out.stored)[0]
    assert (ref_lp - base_lp).abs().max().item() < 1e-6
    assert (after - cur_lp).mean().item() > 1.0


@pytest.mark.parametrize("tiny", BACKBONES)
def test_save_load_round_trip(tiny, tmp_path):
    policy = make_policy(tiny)
    obs = make_obs()
    trained_step(policy, obs, steps=2)
    policy.save_pretrained(tmp_path)
    loaded = load_policy(tmp_path)  # raises on any missing / unexpected key
    assert loaded.cfg.tiny == tiny and type(loaded._base()).__name__ == CLASSES[tiny]
    a = policy.act(obs, generator=torch.Generator().manual_seed(7))
    b = loaded.act(obs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.actions, b.actions)
    assert torch.equal(a.stored["tokens"], b.stored["tokens"])
    assert (a.log_probs - b.log_probs).abs().max().item() < 1e-6
    assert torch.allclose(a.values, b.values, atol=1e-6)
