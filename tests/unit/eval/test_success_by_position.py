"""scripts/success_by_position.py: equal-count bins of the object's initial position, read
from a real ManiSkill env reset per seed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location(
        "success_by_position", ROOT / "scripts" / "success_by_position.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_equal_count_bins_split_seeds_by_coordinate():
    mod = _script()
    coord = {10: 0.05, 11: -0.09, 12: 0.0, 13: 0.08, 14: -0.02, 15: 0.03}
    edges = mod.equal_count_edges(list(coord.values()), 3)
    assert edges == [0.0, 0.05]  # a value on a boundary goes to the bin above
    assert mod.by_bins(list(coord), coord, edges) == [[11, 14], [12, 15], [10, 13]]
    assert mod.by_bins(list(coord), coord, mod.equal_count_edges(list(coord.values()), 1)) == [
        sorted(coord)]
    with pytest.raises(ValueError, match="--bins 7"):
        mod.equal_count_edges(list(coord.values()), 7)


def test_initial_positions_are_the_seeded_cube_poses():
    from vlarl.config import load_config

    mod = _script()
    cfg = load_config(ROOT / "recipes/cpu/quickstart.yaml", ["--env.image_size", "32"])
    pos = mod.initial_positions(cfg, [1000000, 1000001, 1000000])
    assert set(pos) == {1000000, 1000001}
    # PushCube-v1 draws the cube's x, y uniformly in [-0.1, 0.1] m, on the table (z = 0.02)
    assert all(abs(p[0]) <= 0.1 and abs(p[1]) <= 0.1 and p[2] == pytest.approx(0.02) for p in pos.values())
    assert pos[1000000] == pytest.approx([-0.0953, -0.0148, 0.02], abs=1e-3)  # seeds are exact
    assert pos[1000000] != pos[1000001]


def test_ridge_cv_r2_finds_a_linear_signal_and_not_noise():
    import numpy as np

    mod = _script()
    rng = np.random.default_rng(0)
    # more features than samples, driven by a few latent factors, as pixels are by a scene
    Z = rng.normal(size=(100, 5))
    X = Z @ rng.normal(size=(5, 300)) + 0.1 * rng.normal(size=(100, 300))
    y = Z @ np.array([1.0, -2.0, 0.5, 1.5, -1.0])
    assert mod.ridge_cv_r2(X, y) > 0.8
    assert mod.ridge_cv_r2(X, rng.normal(size=100)) < 0.1
