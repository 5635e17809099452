"""OpenVLA's Prismatic architecture through token_vla, offline, on a tiny remote-code checkpoint.

The checkpoint reproduces what makes OpenVLA-7B hard to batch: a remote
``PrismaticForConditionalGeneration``-style class (``vision_backbone`` -> ``projector`` ->
``language_model``, a Llama) whose ``forward`` has OpenVLA's signature - no
``position_ids``, no ``logits_to_keep`` - inserts the image patches after the first token,
and generates with a KV cache at batch 1 only; its config and model are named in
``auto_map`` under ``AutoModelForVision2Seq`` only; its remote processor takes one PIL image
per prompt and has no image token. token_vla runs it through
:func:`vlarl.policies.token_vla.prismatic.prismatic_forward` (batched, left-padded).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import make_obs

from vlarl.policies import load_policy
from vlarl.policies.token_vla.prismatic import is_prismatic, prismatic_forward
from vlarl.types import Obs

K, A = 2, 7
OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"

_CONFIG_PY = '''
from transformers import LlamaConfig, PretrainedConfig


class TinyPrismaticConfig(PretrainedConfig):
    model_type = "tiny_prismatic"
    sub_configs = {"text_config": LlamaConfig}

    def __init__(self, text_config=None, image_size=64, patch_size=16, vision_dim=24, **kwargs):
        if isinstance(text_config, dict):
            text_config = LlamaConfig(**text_config)
        self.text_config = text_config if text_config is not None else LlamaConfig()
        self.image_size, self.patch_size, self.vision_dim = image_size, patch_size, vision_dim
        super().__init__(**kwargs)
'''

# OpenVLA's forward semantics (modeling_prismatic.py), reduced to what the tiny model needs.
_MODELING_PY = '''
from typing import List, Optional

import torch
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tinyprismatic import TinyPrismaticConfig


class TinyVisionBackbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.patchify = nn.Conv2d(3, config.vision_dim, config.patch_size, config.patch_size)

    def forward(self, pixel_values):
        return self.patchify(pixel_values).flatten(2).transpose(1, 2)  # [B, P, Dv]


class TinyProjector(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.text_config.hidden_size
        self.fc1, self.act, self.fc2 = nn.Linear(config.vision_dim, d), nn.GELU(), nn.Linear(d, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TinyPrismaticForConditionalGeneration(PreTrainedModel):
    config_class = TinyPrismaticConfig
    _no_split_modules = ["LlamaDecoderLayer"]
    supports_gradient_checkpointing = True

    def __init__(self, config):
        super().__init__(config)
        self.vision_backbone = TinyVisionBackbone(config)
        self.projector = TinyProjector(config)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        past_key_values: Optional[List[torch.FloatTensor]] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_projector_features: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        if input_ids.shape[1] == 1:
            assert input_ids.shape[0] == 1, "Generation is only currently supported for batch size of 1!"
            assert past_key_values is not None
            return self.language_model(input_ids=input_ids, past_key_values=past_key_values,
                                       use_cache=use_cache, output_hidden_states=output_hidden_states)
        patches = self.projector(self.vision_backbone(pixel_values))
        text = self.get_input_embeddings()(input_ids)
        embeds = torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)
        mask = None
        if attention_mask is not None:
            ones = attention_mask.new_ones(patches.shape[:2])
            mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        lab = None
        if labels is not None:
            ign = labels.new_full(patches.shape[:2], -100)
            lab = torch.cat([labels[:, :1], ign, labels[:, 1:]], dim=1)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=lab,
                                   use_cache=use_cache, output_hidden_states=output_hidden_states)
'''

_PROCESSING_PY = '''
from transformers import BatchFeature, ProcessorMixin


class TinyPrismaticProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, text=None, images=None, padding=False, return_tensors=None, **kwargs):
        # OpenVLA's image processor calls img.convert("RGB"): PIL images only, one per prompt
        images = [im.convert("RGB") for im in images]
        pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
        # OpenVLA's Llama tokenizer starts every prompt with <s>; this tiny one is told to
        text = [self.tokenizer.bos_token + t for t in text]
        enc = self.tokenizer(text, padding=padding, return_tensors=return_tensors)
        return BatchFeature(data={**enc, "pixel_values": pixel_values})
'''


@pytest.fixture(scope="module")
def prismatic_ckpt(tmp_path_factory):
    """Tiny Llama + patch backbone in OpenVLA's packaging; tokenizer and image processor of
    the tiny PaliGemma (its tokenizer adds <bos>, as OpenVLA's Llama tokenizer does)."""
    import importlib
    import sys
    from pathlib import Path

    from vlarl.policies.tiny import tiny_checkpoint

    src = Path(tiny_checkpoint("paligemma", 256))
    d = tmp_path_factory.mktemp("prismatic") / "tiny_prismatic"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, d / f)
    (d / "configuration_tinyprismatic.py").write_text(_CONFIG_PY)
    (d / "modeling_tinyprismatic.py").write_text(_MODELING_PY)
    (d / "processing_tinyprismatic.py").write_text(_PROCESSING_PY)
    vocab = json.loads((src / "config.json").read_text())["text_config"]["vocab_size"]
    sys.path.insert(0, str(d))
    try:
        conf = importlib.import_module("configuration_tinyprismatic")
        text = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 512, "bos_token_id": 2, "eos_token_id": 1,
                "pad_token_id": 0}
        cfg = conf.TinyPrismaticConfig(text_config=text, pad_token_id=0)
    finally:
        sys.path.remove(str(d))
    cfg.architectures = ["TinyPrismaticForConditionalGeneration"]
    cfg.auto_map = {"AutoConfig": "configuration_tinyprismatic.TinyPrismaticConfig",
                    "AutoModelForVision2Seq":
                        "modeling_tinyprismatic.TinyPrismaticForConditionalGeneration"}
    cfg.save_pretrained(d)
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_cls = get_class_from_dynamic_module(
        "modeling_tinyprismatic.TinyPrismaticForConditionalGeneration", str(d))
    torch.manual_seed(0)
    model_cls(model_cls.config_class.from_pretrained(d)).save_pretrained(d)
    pre = json.loads((src / "processor_config.json").read_text())
    (d / "processor_config.json").write_text(json.dumps({
        "image_processor": pre["image_processor"], "processor_class": "TinyPrismaticProcessor",
        "auto_map": {"AutoProcessor": "processing_tinyprismatic.TinyPrismaticProcessor"}}))
    return d


def _policy(path, **kw):
    return load_policy(path, trust_remote_code=True, chunk_size=K, action_dim=A,
                       action_token_layout="openvla", prompt_template=OPENVLA_PROMPT, **kw)


def _obs(instructions: list[str], seed: int = 0) -> Obs:
    g = torch.Generator().manual_seed(seed)
    n = len(instructions)
    return Obs(torch.randint(0, 255, (n, 1, 64, 64, 3), dtype=torch.uint8, generator=g),
               torch.rand(n, 9, generator=g) * 2 - 1, instructions)


def test_loads_as_prismatic_and_one_row_equals_the_remote_forward(prismatic_ckpt):
    policy = _policy(prismatic_ckpt)
    base = policy._base()
    assert type(base).__name__ == "TinyPrismaticForConditionalGeneration" and is_prismatic(base)
    assert policy.image_token == "" and policy.processor.tokenizer.padding_side == "left"
    obs = _obs(["push the cube to the goal"])
    batch = policy._encode(obs)
    assert batch["input_ids"][0, 0].item() == policy.processor.tokenizer.bos_token_id
    with torch.no_grad():
        ref = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"], output_hidden_states=True)
        out = prismatic_forward(base, **batch, output_hidden_states=True)
    p = base.config.image_size // base.config.patch_size
    assert ref.logits.shape[1] == batch["input_ids"].shape[1] + p * p
    # Same function as the remote forward; outputs in the text layout (patches removed).
    keep = torch.cat([torch.zeros(1, dtype=torch.long),
                      torch.arange(1 + p * p, ref.logits.shape[1])])
    assert torch.allclose(out.logits, ref.logits[:, keep], atol=1e-5)
    assert torch.allclose(out.hidden_states[-1], ref.hidden_states[-1][:, keep], atol=1e-5)


def test_left_padded_batch_equals_each_row_alone_and_evaluate_equals_act(prismatic_ckpt):
    policy = _policy(prismatic_ckpt)
    instr = ["push the cube", "pick up the red cube and lift it high above the table", "pull"]
    obs = _obs(instr, seed=1)
    batch = policy._encode(obs)
    assert (batch["attention_mask"] == 0).any()  # the prompts differ in length: padded rows
    out = policy.act(obs, generator=torch.Generator().manual_seed(3))
    for i in range(3):
        one = Obs(obs.images[i:i + 1], obs.state[i:i + 1], [instr[i]])
        lp, _, _ = policy.evaluate(one, {"tokens": out.stored["tokens"][i:i + 1]})
        assert abs(lp.item() - out.log_probs[i].item()) < 1e-4, i
        greedy_alone = policy.act(one, deterministic=True).stored["tokens"]
        greedy_batch = policy.act(obs, deterministic=True).stored["tokens"][i:i + 1]
        assert torch.equal(greedy_alone, greedy_batch), i
    lp, ent, _ = policy.evaluate(obs, out.stored)
    assert (lp - out.log_probs).abs().max().item() < 1e-4
    assert (ent > 0).all()


def test_ppo_gradient_reaches_the_lora_adapters_and_sft_loss_is_finite(prismatic_ckpt, tmp_path):
    policy = _policy(prismatic_ckpt, use_lora=True, lora_r=4, lora_alpha=8)
    obs = _obs(["push the cube", "pick up the red cube"], seed=2)
    out = policy.act(obs, generator=torch.Generator().manual_seed(0))
    policy.train()
    lp, _, _ = policy.evaluate(obs, out.stored)
    (-lp.sum()).backward()
    grads = [p.grad for n, p in policy.named_parameters() if "lora_" in n and p.requires_grad]
    assert grads and sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    policy.zero_grad()
    loss = policy.sft_loss(obs, out.actions)
    assert torch.isfinite(loss) and loss.item() > 0
    # The reference policy (adapters off) runs through the same batched path.
    with torch.no_grad(), policy.reference():
        ref_lp, _, _ = policy.evaluate(obs, out.stored)
    assert torch.isfinite(ref_lp).all()
    # Saved and reloaded: the same remote class, the same numbers.
    policy.eval().save_pretrained(tmp_path / "p")
    again = load_policy(tmp_path / "p")
    lp2, _, _ = again.evaluate(obs, out.stored)
    assert is_prismatic(again._base())
    assert (lp2 - policy.evaluate(obs, out.stored)[0]).abs().max().item() < 1e-5


def test_more_than_one_camera_is_refused(prismatic_ckpt):
    policy = _policy(prismatic_ckpt)
    obs = make_obs()
    two = Obs(torch.cat([obs.images, obs.images], 1), obs.state, obs.instructions)
    with pytest.raises(ValueError, match="one camera image per step; the env gives 2"):
        policy.act(two)
