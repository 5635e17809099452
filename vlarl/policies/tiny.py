"""Tiny random-weight VLAs built offline from transformers config classes.

No weights can be downloaded here, so tests and smoke runs use architectures of a real
family (PaliGemma = SigLIP vision + Gemma text) shrunk to ~1 M parameters, randomly
initialised with a fixed seed, and written with ``save_pretrained`` (model + processor).
Policies then load them back with ``AutoModelForImageTextToText`` / ``AutoProcessor`` -
the same code path as a real checkpoint, so nothing is special-cased for tests.

Public API (``flow_vla`` reuses the pieces):

* :func:`tiny_checkpoint` ``(name, action_bins=256) -> str`` - directory of a cached tiny
  model + processor (built on first use under ``<cache_root>/tiny/<name>-<hash>``).
* :func:`tiny_vision_config` / :func:`tiny_text_config` - kwargs of the tiny SigLIP / Gemma.
* :func:`paligemma_processor` - a PaliGemmaProcessor over the offline tokenizer.
* :func:`add_action_tokens` - append ``<act_0> .. <act_{bins-1}>`` (the vocab's last ids).
* :func:`cached_build` - build-once-then-rename helper for other tiny builders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlarl.policies.tokenizer import build_once, build_tokenizer, cache_root

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


def _build_paligemma(out_dir: Path, action_bins: int) -> None:
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


def _build_idefics3(out_dir: Path, action_bins: int) -> None:
    from vlarl.policies.tiny_backbones import build_idefics3

    build_idefics3(out_dir, action_bins)


def _build_llava(out_dir: Path, action_bins: int) -> None:
    from vlarl.policies.tiny_backbones import build_llava

    build_llava(out_dir, action_bins)


TINY_BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "paligemma": _build_paligemma, "idefics3": _build_idefics3, "llava": _build_llava}
"""Tiny architectures by ``PolicyConfig.tiny`` name: ``builder(out_dir, action_bins)``."""


def cached_build(kind: str, key: dict[str, Any], build: Callable[[Path], None]) -> str:
    """Run ``build(tmp_dir)`` once per ``key`` and cache the result; return the directory.

    The directory is renamed into place only when complete, so concurrent processes (parallel
    tests) never load half a checkpoint. The caller's torch RNG state is the same whether
    the entry was built or found.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    def build_keeping_rng(out_dir: Path) -> None:
        # builders seed torch; the caller's RNG must not depend on whether the cache was warm
        with torch.random.fork_rng(devices=[]):
            build(out_dir)

    return str(build_once(cache_root() / "tiny" / f"{kind}-{digest}", "config.json",
                          build_keeping_rng))


def tiny_checkpoint(name: str = "paligemma", action_bins: int = 256) -> str:
    """Directory of the tiny ``name`` model + processor with ``action_bins`` action tokens."""
    if name not in TINY_BUILDERS:
        raise ValueError(f"policy.tiny={name!r} is not allowed for token policies; "
                         f"choose one of {sorted(TINY_BUILDERS)}")
    import transformers

    key = {"name": name, "bins": action_bins, "seed": SEED, "vision": tiny_vision_config(),
           "text": tiny_text_config(0), "transformers": transformers.__version__, "v": 1}
    return cached_build(name, key, lambda d: TINY_BUILDERS[name](d, action_bins))
