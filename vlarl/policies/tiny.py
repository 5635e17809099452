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

from vlarl.policies.tiny_backbones import (  # noqa: F401  (re-exported: the public API above)
    IMAGE_SIZE,
    PATCH_SIZE,
    SEED,
    add_action_tokens,
    build_idefics3,
    build_llava,
    build_paligemma,
    paligemma_processor,
    tiny_text_config,
    tiny_vision_config,
)
from vlarl.policies.tokenizer import build_once
from vlarl.runtime.system import cache_root

TINY_BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "paligemma": build_paligemma, "idefics3": build_idefics3, "llava": build_llava}
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
