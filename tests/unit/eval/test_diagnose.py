"""vlarl diagnose: the ranked failure-mode table (pure numbers) and one real tiny run via the CLI."""

from __future__ import annotations

import json

import pytest

from vlarl.config import Config, EnvConfig
from vlarl.eval.diagnose import AXES, _splits_for, diagnose_markdown, diagnose_rows
from vlarl.eval.stats import mcnemar_exact_p, wilson_interval
from vlarl.policies import FlowVLAConfig


def test_rows_numbers_and_order():
    train = [1] * 8 + [0] * 2                        # 8/10
    succ = {"train": train,
            "unseen_instruction": [1] * 8 + [0] * 2,  # same: drop 0
            "unseen_color": [0] * 4 + [1] * 4 + [0] * 2,  # 4/10: drop 0.4, 4 seeds lost
            "wide_pose": [1] * 9 + [0],               # 9/10: drop -0.1 (1 seed gained)
            "distractor": [0] * 10}                    # 0/10: drop 0.8
    base, rows = diagnose_rows(succ)
    assert base["n"] == 10 and base["success_rate"] == 0.8
    assert [r["split"] for r in rows] == ["distractor", "unseen_color", "unseen_instruction", "wide_pose"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert [round(r["drop"], 6) for r in rows] == [0.8, 0.4, 0.0, -0.1]
    color = rows[1]
    assert (color["axis"], color["level"], color["n"], color["successes"]) == ("color", 1, 10, 4)
    assert (color["only_train"], color["only_split"]) == (4, 0)
    assert color["p_value"] == pytest.approx(mcnemar_exact_p(0, 4)) == pytest.approx(0.125)
    assert (color["ci_low"], color["ci_high"]) == pytest.approx(wilson_interval(4, 10))
    for r in rows:
        assert r["ci_low"] <= r["success_rate"] <= r["ci_high"]
        assert r["drop_ci_low"] <= r["drop"] <= r["drop_ci_high"]
    md = diagnose_markdown(base, rows)
    assert md.index("| distractor |") < md.index("| unseen_color |") < md.index("| wide_pose |")
    assert "| 2 | color | 1 | unseen_color | 10 | 40.0 [16.8, 68.7] | +40.0 [" in md


def test_rows_need_train_and_equal_seeds():
    with pytest.raises(ValueError, match="'train'"):
        diagnose_rows({"wide_pose": [1, 0]})
    with pytest.raises(ValueError, match="same seeds"):
        diagnose_rows({"train": [1, 0], "wide_pose": [1, 0, 1]})


def test_colour_task_skips_axes_that_recolour():
    cfg = Config()
    cfg.env = EnvConfig(task="PickCube-Color-v1")
    keep, skipped = _splits_for(cfg)
    assert keep == ["train", "unseen_instruction", "wide_pose", "wide_pose_far"]
    assert sorted(skipped) == ["distractor", "unseen_color", "unseen_color_black"]
    assert len(AXES) == 6 and {a for a, _, _ in AXES} == {"language", "color", "clutter", "pose"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from vlarl.policies import build_policy

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    build_policy(FlowVLAConfig(tiny="pi0", chunk_size=4)).save_pretrained(path)
    return str(path)


def test_cli_diagnose_tiny_policy(checkpoint, tmp_path, monkeypatch):
    import vlarl.eval.diagnose as D
    from vlarl.cli import main

    # three axes keep the test short (one env build each); the two severity-2 splits among them
    monkeypatch.setattr(D, "AXES", (("language", 1, "unseen_instruction"),
                                    ("color", 2, "unseen_color_black"), ("pose", 2, "wide_pose_far")))
    out = tmp_path / "diag"
    rc = main(["diagnose", "--policy.path", checkpoint, "--env.task", "PushCube-v1",
               "--env.backend", "inline", "--env.num_envs", "1", "--env.image_size", "32",
               "--env.max_episode_steps", "8", "--eval.num_episodes", "3", "--eval.out", str(out)])
    assert rc == 0
    rep = json.loads((out / "diagnose.json").read_text())
    assert rep["seeds"] == [1_000_000, 1_000_001, 1_000_002]
    assert rep["train"]["n"] == 3
    assert sorted(r["split"] for r in rep["rows"]) == ["unseen_color_black", "unseen_instruction",
                                                       "wide_pose_far"]
    drops = [r["drop"] for r in rep["rows"]]
    assert drops == sorted(drops, reverse=True)
    for r in [rep["train"], *rep["rows"]]:
        eps = rep["splits"][r["split"]]["episodes"]
        assert r["n"] == len(eps) == 3
        assert r["successes"] == sum(e["success_once"] for e in eps)
        assert r["ci_low"] <= r["success_rate"] <= r["ci_high"]
        assert [e["seed"] for e in eps] == rep["seeds"]
    for r in rep["rows"]:
        assert r["drop"] == pytest.approx(rep["train"]["success_rate"] - r["success_rate"])
    md = (out / "diagnose.md").read_text()
    assert all(f"| {s} |" in md for s in rep["splits"])
    assert (out / "diagnose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
