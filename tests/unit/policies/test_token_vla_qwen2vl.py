"""token_vla on a tiny Qwen2-VL: multimodal RoPE (3-D position ids from ``image_grid_thw``).

transformers' ``Qwen2VLProcessor`` cannot be built here (its video processor needs
torchvision), so the test feeds the model through a stand-in processor doing what
``Qwen2VLProcessor`` does for images: ``Qwen2VLImageProcessorPil`` patches, each
``<|image_pad|>`` expanded to ``grid_t*grid_h*grid_w / merge^2`` copies, and
``mm_token_type_ids`` (1 on image tokens). The model, LoRA, act / evaluate are the real ones;
``AutoProcessor`` loading and save -> load are therefore not covered for this family.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_obs, trained_step

from vlarl.policies import TokenVLAConfig
from vlarl.policies.common import apply_lora
from vlarl.policies.tiny import IMAGE_SIZE, PATCH_SIZE, SEED, add_action_tokens
from vlarl.policies.token_vla.modeling_token_vla import TokenVLAPolicy
from vlarl.policies.tokenizer import build_tokenizer

K, A = 2, 7
IMAGE_PAD = "<|image_pad|>"


class StandInQwen2VLProcessor:
    """Qwen2VLProcessor's image path without its video processor (see the module docstring)."""

    def __init__(self, tokenizer, image_processor):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token = IMAGE_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    def __call__(self, images, text, return_tensors="pt", padding=True):
        flat = [im for cams in images for im in cams]
        pix = self.image_processor(images=flat, return_tensors=return_tensors)
        counts = iter((pix["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2)
                      .tolist())
        expanded = []
        for t in text:
            parts = t.split(IMAGE_PAD)
            expanded.append(parts[0] + "".join(IMAGE_PAD * next(counts) + p for p in parts[1:]))
        enc = self.tokenizer(expanded, return_tensors=return_tensors, padding=padding)
        mm = (enc["input_ids"] == self.image_token_id).long()
        return {**enc, "mm_token_type_ids": mm, **pix}


@pytest.fixture(scope="module")
def parts():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [
        "<|vision_start|>", "<|vision_end|>", IMAGE_PAD]})
    add_action_tokens(tok, 256)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels})
    processor = StandInQwen2VLProcessor(tok, image_processor)
    text = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": len(tok),
            "max_position_embeddings": 1024, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            # head_dim 32 -> rotary half-dim 16 = temporal 4 + height 6 + width 6
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [4, 6, 6]}}
    vision = {"depth": 2, "embed_dim": 64, "hidden_size": 128, "mlp_ratio": 2, "num_heads": 2,
              "patch_size": PATCH_SIZE, "spatial_merge_size": 2, "temporal_patch_size": 2}
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config=vision, text_config=text, image_token_id=ids(IMAGE_PAD),
        video_token_id=tok.unk_token_id, vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"), pad_token_id=tok.pad_token_id)
    torch.manual_seed(SEED)
    state = Qwen2VLForConditionalGeneration(config).eval().state_dict()

    def make(**kw):
        cfg = TokenVLAConfig(chunk_size=K, action_dim=A, **kw)
        model = Qwen2VLForConditionalGeneration(config).eval()
        model.load_state_dict(state)
        return TokenVLAPolicy(apply_lora(model, cfg), processor, cfg)

    return make


def test_mrope_positions(parts):
    policy = parts()
    obs = make_obs()
    assert policy.prompts(obs)[0].startswith(f"<|vision_start|>{IMAGE_PAD}<|vision_end|>What")
    batch = policy._encode(obs)
    pos, mask = batch["position_ids"], batch["attention_mask"]
    n, length = batch["input_ids"].shape
    assert pos.shape == (3, n, length)
    # 64x64 image, 8 px patches, 2x2 merge -> a 4x4 grid of 16 image tokens after
    # <|vision_start|> (position 0): t = 1, h = 1 + row, w = 1 + col.
    img = batch["input_ids"][0] == policy.processor.image_token_id
    assert int(img.sum()) == 16
    grid = pos[:, 0, img]
    assert grid[0].tolist() == [1] * 16
    assert grid[1].tolist() == [1 + i // 4 for i in range(16)]
    assert grid[2].tolist() == [1 + i % 4 for i in range(16)]
    # Text after the image continues from max + 1 = 5 (<|vision_end|>), equal in all rows.
    first_text = int(img.nonzero().max()) + 1
    assert pos[:, 0, first_text].tolist() == [5, 5, 5]
    last = pos[:, :, -1]
    assert torch.equal(last[0], last[1]) and torch.equal(last[1], last[2])
    # Left padding: row positions start at 0 at the first real token.
    for i in range(n):
        start = int(mask[i].nonzero().min())
        assert pos[:, i, start].tolist() == [0, 0, 0]


@pytest.mark.parametrize("decoding", ["autoregressive", "parallel"])
def test_act_matches_evaluate(parts, decoding):
    policy = parts(decoding=decoding)
    obs = make_obs()
    out = policy.act(obs, generator=torch.Generator().manual_seed(1))
    lp, ent, v = policy.evaluate(obs, out.stored)
    assert (lp - out.log_probs).abs().max().item() < 1e-5
    assert torch.allclose(v, out.values, atol=1e-6) and 14 * 5.0 < float(ent.min())
    single = policy.evaluate(obs.index([2]), {"tokens": out.stored["tokens"][2:3]})[0]
    assert abs(single.item() - out.log_probs[2].item()) < 1e-4


def test_lora_step_changes_only_adapters_and_heads(parts):
    policy = parts()
    obs = make_obs()
    out = policy.act(obs, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = policy.evaluate(obs, out.stored)[0]
    trainable = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    assert all("lora_" in n or "value_head" in n or "state_proj" in n for n in trainable)
    trained_step(policy, obs, out.stored, steps=2)
    assert all(not torch.equal(p, trainable[n]) for n, p in policy.named_parameters()
               if n in trainable)
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if n in frozen)
    with torch.no_grad():
        with policy.reference():
            ref = policy.evaluate(obs, out.stored)[0]
        after = policy.evaluate(obs, out.stored)[0]
    assert (ref - before).abs().max().item() < 1e-6
    assert (after - before).mean().item() > 1.0
