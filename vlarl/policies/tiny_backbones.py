"""Tiny offline builders of image-text-to-text families other than PaliGemma.

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
torchvision (not a dependency here). ``token_inputs`` handles their inputs (M-RoPE position
ids, ``image_grid_thw``, ``mm_token_type_ids``); ``tests/test_token_vla_qwen2vl.py`` proves it
on a tiny Qwen2-VL fed by a stand-in for the processor.

Sizes: 2-layer vision towers and 2-layer 128-wide decoders on 64x64 images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlarl.policies.tiny import (
    IMAGE_SIZE,
    PATCH_SIZE,
    SEED,
    add_action_tokens,
    tiny_text_config,
    tiny_vision_config,
)
from vlarl.policies.tokenizer import build_tokenizer

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
