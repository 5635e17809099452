"""Tiny offline builders of image-text-to-text families (PaliGemma, Idefics3, LLaVA) and the
configuration pieces they share; ``tiny.py`` caches what they build.

Each builder writes a random-weight model + processor with ``save_pretrained`` that
``AutoModelForImageTextToText`` / ``AutoProcessor`` load back, like a real checkpoint, so
``token_vla`` is proven on the family's own input conventions (image placeholders, pixel
inputs, position ids). Registered in ``tiny.TINY_BUILDERS``; select with ``policy.tiny``.

* ``idefics3`` - Idefics3 = SmolVLM's architecture (SigLIP-style vision tower + pixel-shuffle
  connector + Llama decoder). SmolVLM's own processor needs the ``num2words`` package, which
  this environment lacks, so the tiny model uses the Idefics3 processor (same prompt layout:
  ``<fake_token_around_image><global-img><image>*n<fake_token_around_image>`` per image).
* ``llava`` - LLaVA (SigLIP vision tower + MLP projector + Llama decoder; one ``<image>``
  per camera expanded to 64 tokens by the processor).

Not built: Qwen2-VL / Qwen2.5-VL - their processors require a video processor, which needs
torchvision (not a dependency here). ``token_vla.inputs`` handles their inputs (M-RoPE position
ids, ``image_grid_thw``, ``mm_token_type_ids``); ``tests/unit/policies/test_token_vla_qwen2vl.py`` proves it
on a tiny Qwen2-VL fed by a stand-in for the processor.

Sizes: 2-layer vision towers and 2-layer 128-wide decoders on 64x64 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlarl.policies.tokenizer import build_tokenizer

IMAGE_SIZE = 64
"""Input resolution of the tiny vision towers (ManiSkill cameras render 64x64 by default)."""
PATCH_SIZE = 8
"""8 px patches: 64 image tokens per camera."""
SEED = 0
"""Random init seed: the same tiny model on every machine."""


def tiny_vision_config() -> dict[str, Any]:
    """2-layer, 64-wide SigLIP vision tower on 64x64 images."""
    return {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2,
                "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "vision_use_head": False}


def tiny_text_config(vocab_size: int, pad_token_id: int = 0) -> dict[str, Any]:
    """2-layer, 128-wide Gemma decoder."""
    return {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
                "vocab_size": vocab_size, "pad_token_id": pad_token_id,
                "max_position_embeddings": 1024}


def add_action_tokens(tokenizer, bins: int) -> int:
    """Append ``<act_0> .. <act_{bins-1}>`` to ``tokenizer``; return the id of ``<act_0>``.

    They become the last ``bins`` ids of the vocabulary, the OpenVLA convention the token
    policy uses for any checkpoint (see ``token_vla``), so tiny models decode them as text.
    """
    start = len(tokenizer)
    added = tokenizer.add_tokens([f"<act_{i}>" for i in range(bins)], special_tokens=True)
    if added != bins or tokenizer.convert_tokens_to_ids("<act_0>") != start:
        raise RuntimeError(f"action tokens must be new and contiguous; added {added} of {bins}")
    return start


def paligemma_processor(tokenizer, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE):
    """PaliGemmaProcessor = SigLIP image processor (resize + normalise) + the tokenizer.

    The processor itself appends PaliGemma's 1152 ``<loc>``/``<seg>`` tokens to the tokenizer.
    """
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    # The PIL backend: the torchvision one is faster but torchvision is not a dependency.
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_paligemma(out_dir: Path, action_bins: int) -> None:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    processor = paligemma_processor(build_tokenizer())
    tok = processor.tokenizer
    add_action_tokens(tok, action_bins)
    text = tiny_text_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", **tiny_vision_config()),
        text_config=dict(model_type="gemma", **text),
        image_token_index=tok.image_token_id, vocab_size=len(tok),
        projection_dim=text["hidden_size"], hidden_size=text["hidden_size"],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(SEED)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))


SCALE_FACTOR = 2
"""Idefics3's pixel-shuffle factor: (64 / 8)^2 / 2^2 = 16 image tokens per camera."""


def idefics3_processor(tokenizer):
    """Idefics3Processor over the offline tokenizer: no image splitting, 64 px images."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]})
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE})
    seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=seq_len)


def build_idefics3(out_dir: Path, action_bins: int) -> None:
    """Tiny Idefics3 (SmolVLM architecture) + processor into ``out_dir``."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    processor = idefics3_processor(build_tokenizer())
    tok = processor.tokenizer
    add_action_tokens(tok, action_bins)
    vision = {k: v for k, v in tiny_vision_config().items() if k != "vision_use_head"}
    text = tiny_text_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    config = Idefics3Config(
        vision_config=vision, text_config=dict(model_type="llama", **text),
        image_token_id=processor.image_token_id, scale_factor=SCALE_FACTOR,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    torch.manual_seed(SEED)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))



def llava_processor(tokenizer):
    """LlavaProcessor = SigLIP image processor (64 px) + the tokenizer; 64 image tokens."""
    from transformers import LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                          patch_size=PATCH_SIZE, vision_feature_select_strategy="full",
                          num_additional_image_tokens=0)


def build_llava(out_dir: Path, action_bins: int) -> None:
    """Tiny LLaVA (SigLIP vision tower, 2-layer MLP projector, Llama decoder) into ``out_dir``."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    processor = llava_processor(build_tokenizer())
    tok = processor.tokenizer
    add_action_tokens(tok, action_bins)
    text = tiny_text_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    config = LlavaConfig(
        vision_config=dict(model_type="siglip_vision_model", **tiny_vision_config()),
        text_config=dict(model_type="llama", **text), image_token_index=processor.image_token_id,
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))
