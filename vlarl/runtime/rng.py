"""Every random stream a run draws from, captured into a checkpoint and restored on resume:
python ``random``, numpy's global RNG, torch CPU and CUDA, and named ``torch.Generator``s."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """States of python ``random``, numpy's global RNG, torch CPU, every CUDA device and the
    named ``torch.Generator`` objects. Only tensors and plain Python inside, so it loads with
    ``torch.load(weights_only=True)``."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any],
                      generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state`; the generator names must match the saved ones."""
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved, given = set(state.get("generators", {})), set(generators or {})
    if saved != given:
        raise ValueError(f"generator names differ: saved {sorted(saved)}, "
                              f"given {sorted(given)}")
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


def _to_tuple(x: Any) -> Any:
    """random.setstate needs tuples; a JSON / pickle round trip may give lists."""
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
