"""Token VLA on a real tiny PaliGemma (random weights, offline tokenizer), real peft LoRA, fp32.

Batch of 3 with random images, states and instructions; chunk k=2, A=7 -> 14 tokens.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import A, K, make_obs, make_policy, trained_step

from vlarl.policies import TokenVLAConfig, build_policy, load_policy, policy_class
from vlarl.policies.sampling import point_token
from vlarl.types import Obs


@pytest.fixture(scope="module")
def policy():
    return make_policy()


def test_act_shapes_and_matches_evaluate(policy):
    obs = make_obs()
    out = policy.act(obs, generator=torch.Generator().manual_seed(1))
    assert out.actions.shape == (3, K, A) and out.actions.dtype == torch.float32
    assert out.log_probs.shape == (3,) and out.values.shape == (3,)
    tok = out.stored["tokens"]
    assert tok.shape == (3, K * A) and int(tok.min()) >= 0 and int(tok.max()) < 256
    assert float(out.actions.abs().max()) <= 1.0
    # Action = bin centre of the token.
    assert torch.allclose(out.actions.view(3, -1), -1 + (tok.float() + 0.5) * 2 / 256)
    lp, ent, v = policy.evaluate(obs, out.stored)
    assert (lp - out.log_probs).abs().max().item() < 1e-5
    # per action token (algo.importance_sampling_level=token): what act stored, summing to it
    tok_lp = out.stored["token_log_probs"]
    assert tok_lp.shape == (3, K * A) and float(tok_lp.max()) < 0
    assert (tok_lp.double().sum(-1).float() - out.log_probs).abs().max().item() < 1e-6
    assert (policy.evaluate(obs, out.stored, per_token=True)[0] - tok_lp).abs().max().item() < 1e-5
    assert torch.allclose(v, out.values, atol=1e-6)
    # Random init: per-token entropy near log(256) = 5.55, 14 tokens.
    assert ent.shape == (3,) and 14 * 5.0 < float(ent.min()) <= 14 * 5.5452
    det1 = policy.act(obs, deterministic=True)
    det2 = policy.act(obs, deterministic=True)
    assert torch.equal(det1.stored["tokens"], det2.stored["tokens"])
    assert (policy.evaluate(obs, det1.stored)[0] - det1.log_probs).abs().max().item() < 1e-5


def test_mean_point_estimate_follows_the_bins_mass(policy, tmp_path):
    """policy.point_estimate=mean: the bin nearest the distribution's mean; mode = argmax.
    Through a saved checkpoint and the eval override (``eval.point_estimate``)."""
    import math

    logp = torch.tensor([[0.40, 0.00, 0.25, 0.35], [0.0, 0.1, 0.1, 0.8]]).clamp_min(1e-12).log()
    assert point_token(logp, policy.cfg.point_estimate).tolist() == [0, 3]  # the default: the mode
    policy.save_pretrained(tmp_path / "p")
    mean = load_policy(tmp_path / "p", point_estimate="mean")
    # means 0.25*2 + 0.35*3 = 1.55 -> bin 2; 0.1 + 0.2 + 2.4 = 2.7 -> bin 3
    assert point_token(logp, mean.cfg.point_estimate).tolist() == [2, 3]
    obs = make_obs()
    out = mean.act(obs, deterministic=True)
    # the tiny model's near-uniform bins: the mean sits mid-range, the mode anywhere
    mid = out.stored["tokens"].float()
    assert 96 <= float(mid.min()) and float(mid.max()) <= 160, mid
    assert not torch.equal(out.stored["tokens"], policy.act(obs, deterministic=True).stored["tokens"])
    assert (mean.evaluate(obs, out.stored)[0] - out.log_probs).abs().max().item() < 1e-5
    assert math.isfinite(float(out.log_probs.sum()))


def test_batch_rows_independent_of_padding(policy):
    """A row's log-prob does not depend on the other rows (left padding + explicit positions)."""
    obs = make_obs(3)
    out = policy.act(obs, generator=torch.Generator().manual_seed(2))
    single = policy.evaluate(obs.index([1]), {"tokens": out.stored["tokens"][1:2]})[0]
    assert abs(single.item() - out.log_probs[1].item()) < 1e-4


def test_lora_step_changes_only_adapters_and_reference_is_base():
    policy = make_policy()
    base = make_policy(use_lora=False, value_head=False)  # fresh load of the same base weights
    obs = make_obs()
    out = policy.act(obs, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base_lp = base.evaluate(obs, out.stored)[0]
        with policy.reference():
            ref_lp = policy.evaluate(obs, out.stored)[0]
        cur_lp = policy.evaluate(obs, out.stored)[0]
    # LoRA B starts at 0: adapters are an exact no-op before training.
    assert (ref_lp - base_lp).abs().max().item() < 1e-6
    assert (cur_lp - base_lp).abs().max().item() < 1e-6

    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    assert all("lora_" in n or "value_head" in n or "state_proj" in n for n in trainable)
    trained_step(policy, obs, out.stored, steps=1)
    # With B = 0 (and the value head's last layer = 0) the first step moves only B and the
    # last layer; the second moves the rest. So check after two steps.
    trained_step(policy, obs, out.stored, steps=1)
    unchanged = [n for n, p in policy.named_parameters()
                 if n in trainable and torch.equal(p, trainable[n])]
    assert unchanged == []
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if n in frozen)
    with torch.no_grad():
        with policy.reference():
            ref_after = policy.evaluate(obs, out.stored)[0]
        cur_after = policy.evaluate(obs, out.stored)[0]
    assert (ref_after - base_lp).abs().max().item() < 1e-6
    # The steps raised the batch's mean log-prob of the trained chunks (rows share adapters,
    # so a single row may go down).
    assert (cur_after - cur_lp).mean().item() > 1.0


def test_save_load_round_trip_and_merge(tmp_path):
    policy = make_policy()
    obs = make_obs()
    trained_step(policy, obs, steps=2)
    policy.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "vlarl_policy.json").read_text())
    assert meta["policy"] == "token_vla" and meta["config"]["chunk_size"] == K
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    loaded = load_policy(tmp_path)  # raises on any missing / unexpected key
    a = policy.act(obs, generator=torch.Generator().manual_seed(7))
    b = loaded.act(obs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.stored["tokens"], b.stored["tokens"])
    assert (a.log_probs - b.log_probs).abs().max().item() < 1e-6
    assert torch.allclose(a.values, b.values, atol=1e-6)

    merged = loaded.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    c = merged.act(obs, generator=torch.Generator().manual_seed(7))
    assert (c.actions - a.actions).abs().max().item() < 1e-4
    assert (c.log_probs - a.log_probs).abs().max().item() < 1e-4
    with pytest.raises(RuntimeError, match="use_lora"), merged.reference():
        pass


def test_full_finetune_sft_loss_decreases():
    policy = make_policy(use_lora=False, value_head=False)
    trainable, total = (sum(p.numel() for p in policy.parameters() if p.requires_grad),
                        sum(p.numel() for p in policy.parameters()))
    assert trainable == total
    obs = make_obs()
    target = torch.rand(3, K, A, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = policy.sft_loss(obs, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 6.0  # ~log(vocab=1752) = 7.5 at random init
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match=r"\[N, 2, 7\]"):
        policy.sft_loss(obs, target[:, :1])


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_policy("no-such-org/no-such-vla")
    assert time.time() - t < 10
    with pytest.raises(FileNotFoundError, match="not an existing directory"):
        load_policy("/no/such/dir")


def test_unknown_policy_lists_known():
    with pytest.raises(KeyError, match="token_vla"):
        policy_class("tokn_vla")


def test_tokenizer_is_deterministic(tmp_path, monkeypatch):
    from vlarl.policies.tokenizer import build_tokenizer

    files = []
    for sub in ("a", "b"):
        monkeypatch.setenv("VLARL_CACHE", str(tmp_path / sub))
        tok = build_tokenizer(save_dir=tmp_path / f"out_{sub}")
        files.append((tmp_path / f"out_{sub}" / "tokenizer.json").read_bytes())
    assert files[0] == files[1]
    ids4 = [tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.image_token_id]
    assert ids4 == [0, 1, 2, 4]
    ids = tok("pick the red cube\n12").input_ids
    assert tok.unk_token_id not in ids and tok.decode(ids) == "pick the red cube\n12"


def test_parallel_decoding_one_forward_matches_evaluate_and_sft(tmp_path):
    """decoding=parallel: act() == evaluate() log-probs, one model forward per decision, the
    chunk's tokens do not depend on each other, SFT fits, and the mode is kept on load."""
    policy = make_policy(decoding="parallel")
    obs = make_obs()
    calls = []
    hook = policy.model.register_forward_hook(lambda *a: calls.append(1))
    out = policy.act(obs, generator=torch.Generator().manual_seed(1))
    hook.remove()
    assert len(calls) == 1  # vs 1 + K*A - 1 = 14 forwards autoregressively
    lp, ent, v = policy.evaluate(obs, out.stored)
    assert (lp - out.log_probs).abs().max().item() < 1e-5
    assert torch.allclose(v, out.values, atol=1e-6) and 14 * 5.0 < float(ent.min())
    # Independence: slot 1's log-prob does not depend on slot 0's token, so changing slots 0
    # and 1 together changes the chunk log-prob by the sum of the two single changes
    # (autoregressive decoding breaks this additivity).
    a = out.stored["tokens"]
    b, c = a.clone(), a.clone()
    b[:, 0] = (a[:, 0] + 7) % 256
    c[:, 1] = (a[:, 1] + 7) % 256
    d = b.clone()
    d[:, 1] = c[:, 1]
    la, lb, lc, ld = (policy.evaluate(obs, {"tokens": t})[0] for t in (a, b, c, d))
    assert (la + ld - lb - lc).abs().max().item() < 1e-4
    ar = make_policy()
    la, lb, lc, ld = (ar.evaluate(obs, {"tokens": t})[0] for t in (a, b, c, d))
    assert (la + ld - lb - lc).abs().max().item() > 1e-3
    out2 = policy.act(obs, deterministic=True)
    assert torch.equal(out2.stored["tokens"],
                       policy.act(obs, deterministic=True).stored["tokens"])
    # SFT on a fixed chunk drives the parallel greedy action onto it.
    policy = make_policy(decoding="parallel", use_lora=False, value_head=False)
    target = torch.rand(3, K, A, generator=torch.Generator().manual_seed(0)) * 2 - 1
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(40):
        loss = policy.sft_loss(obs, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    greedy = policy.act(obs, deterministic=True).actions
    assert (greedy - target).abs().max().item() <= 1 / 256 + 1e-6  # within half a bin
    policy.save_pretrained(tmp_path)
    assert load_policy(tmp_path).cfg.decoding == "parallel"
    with pytest.raises(ValueError, match="decoding='parallel'"):
        load_policy(tmp_path, decoding="autoregressive")


def test_run_config_keeps_the_checkpoints_state_range(tmp_path):
    """RL builds the policy from the run's PolicyConfig, whose ``state_low/high`` are None:
    the SFT checkpoint's saved range must survive (else the state is binned on [-4, 4], a
    different input than the one the base learned); an explicit value still overrides. With
    the state as text the range shows in the prompt's state bins."""
    low, high = [-0.5] * 9, [0.5] * 9
    text = {"chunk_size": 2, "action_bins": 16, "state_input": "text"}
    sft = build_policy(TokenVLAConfig(**text, state_low=low, state_high=high))
    sft.save_pretrained(tmp_path)
    obs = Obs(torch.zeros(1, 1, 64, 64, 3, dtype=torch.uint8), torch.full((1, 9), 0.25), ["push"])
    rl = build_policy(TokenVLAConfig(path=str(tmp_path), **text))
    assert rl.cfg.state_low == low and rl.cfg.state_high == high
    assert rl.prompts(obs) == sft.prompts(obs)  # the same state tokens
    wide = build_policy(TokenVLAConfig(path=str(tmp_path), **text,
                                     state_low=[-4.0] * 9, state_high=[4.0] * 9))
    assert wide.prompts(obs) != sft.prompts(obs)
    # the same coarse input without per-dimension lists, for any state size
    fixed = build_policy(TokenVLAConfig(path=str(tmp_path), **text,
                                      state_range="fixed"))
    assert fixed.cfg.state_low is None and fixed.prompts(obs) == wide.prompts(obs)
    fixed.save_pretrained(tmp_path / "rl")
    # a run's default ``demos`` keeps the range the checkpoint was trained on
    again = build_policy(TokenVLAConfig(path=str(tmp_path / "rl"), **text))
    assert again.cfg.state_range == "fixed" and again.prompts(obs) == wide.prompts(obs)


def test_run_config_cannot_silently_change_what_the_checkpoint_reads(tmp_path):
    """A run whose recipe leaves ``use_state`` / ``action_bins`` at another value than the
    checkpoint was trained with is refused, naming the key and the value to write (RL from a
    no-state SFT base with a recipe saying ``use_state: true`` would feed it state tokens)."""
    sft = build_policy(TokenVLAConfig(chunk_size=2, action_bins=16, use_state=False))
    sft.save_pretrained(tmp_path)
    obs = Obs(torch.zeros(1, 1, 64, 64, 3, dtype=torch.uint8), torch.full((1, 9), 0.25), ["push"])
    with pytest.raises(ValueError, match=r"policy\.use_state=True differs .*use_state=False.*"
                                         r"set policy\.use_state: false"):
        build_policy(TokenVLAConfig(path=str(tmp_path), chunk_size=2, action_bins=16))
    with pytest.raises(ValueError, match=r"policy\.action_bins=64 differs .*action_bins=16"):
        build_policy(TokenVLAConfig(path=str(tmp_path), chunk_size=2, action_bins=64, use_state=False))
    rl = build_policy(TokenVLAConfig(path=str(tmp_path), chunk_size=2, action_bins=16, use_state=False))
    assert "state:" not in rl.prompts(obs)[0] and rl.prompts(obs) == sft.prompts(obs)
    assert load_policy(tmp_path).cfg.use_state is False  # no overrides: the checkpoint's own


def test_lora_lm_head_adapts_the_output_layer_and_merges_untied(tmp_path):
    """``policy.lora_lm_head``: the tied output layer gets an adapter; training moves it; a merge
    folds it into the output layer only (input embeddings unchanged) and reloads identically."""
    policy = make_policy(lora_lm_head=True)
    base = policy.model.get_base_model()
    head = base.get_output_embeddings()
    assert head.base_layer.weight is base.get_input_embeddings().weight  # tied in PaliGemma
    assert {n for n, p in policy.model.named_parameters() if p.requires_grad and "lm_head" in n} \
        == {"base_model.model.lm_head.lora_A.default.weight", "base_model.model.lm_head.lora_B.default.weight"}
    emb0 = base.get_input_embeddings().weight.detach().clone()
    obs = make_obs()
    trained_step(policy, obs, steps=2)
    assert float(head.lora_B["default"].weight.abs().sum()) > 0  # the output layer moved
    policy.save_pretrained(tmp_path / "adapted")
    loaded = load_policy(tmp_path / "adapted")
    a = policy.act(obs, generator=torch.Generator().manual_seed(7))
    b = loaded.act(obs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.stored["tokens"], b.stored["tokens"])
    assert (a.log_probs - b.log_probs).abs().max().item() < 1e-6

    merged = loaded.merge_and_unload()
    mbase = merged.model
    assert mbase.get_output_embeddings().weight is not mbase.get_input_embeddings().weight
    assert torch.equal(mbase.get_input_embeddings().weight, emb0)  # the adapter went to lm_head only
    c = merged.act(obs, generator=torch.Generator().manual_seed(7))
    assert torch.equal(c.stored["tokens"], a.stored["tokens"])
    assert (c.log_probs - a.log_probs).abs().max().item() < 1e-4
    merged.save_pretrained(tmp_path / "merged")  # reloads untied (tie_word_embeddings false)
    d = load_policy(tmp_path / "merged").act(obs, generator=torch.Generator().manual_seed(7))
    assert (d.log_probs - a.log_probs).abs().max().item() < 1e-4
    e = load_policy(tmp_path / "adapted", use_lora=False).act(
        obs, generator=torch.Generator().manual_seed(7))  # merge on load (iRe-VLA's SFT phase)
    assert (e.log_probs - a.log_probs).abs().max().item() < 1e-4
