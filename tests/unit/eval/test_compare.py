"""vlarl compare: pairing checkpoints across separate eval reports (pure JSON in, numbers out;
the real-report case is in tests/unit/eval/test_eval.py::test_run_eval_report_files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlarl.eval.compare import compare_reports, comparison_table
from vlarl.eval.stats import wilson_interval

SEEDS = list(range(1000, 1010))


def _report(path: Path, label: str, splits: dict[str, list[int]], seed0: int = 1000,
            image_size: int = 64) -> Path:
    seeds = list(range(seed0, seed0 + 10))
    results = []
    for split, success in splits.items():
        lo, hi = wilson_interval(sum(success), len(success))
        results.append({"checkpoint": f"/ck/{label}", "label": label, "split": split,
                        "task": "PushCube-v1", "n": len(success), "success_rate": sum(success) / 10,
                        "ci_low": lo, "ci_high": hi,
                        "episodes": [{"seed": s, "success_once": bool(v)} for s, v in zip(seeds, success)]})
    path.mkdir(parents=True, exist_ok=True)
    (path / "report.json").write_text(json.dumps({
        "seeds": seeds, "results": results,
        "config": {"env": {"image_size": image_size, "control_mode": "pd_ee_delta_pose",
                           "max_episode_steps": 50, "terminate_on_success": True,
                           "reward_mode": "sparse"}, "eval": {"deterministic": True}}}))
    return path


def test_pairs_by_task_and_split_with_hand_counted_discordance(tmp_path):
    base = _report(tmp_path / "a", "base", {"train": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
                                            "wide_pose": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]})
    # train: seeds 0-1 both, 2-6 only the candidate -> +50 pp, discordant 5 : 0
    cand = _report(tmp_path / "b", "rl", {"train": [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                                          "unseen_color": [1] * 10})  # no baseline: skipped
    out = compare_reports([base, cand / "report.json"])
    (row,) = out["rows"]
    assert (row["split"], row["candidate"], row["n"]) == ("train", "rl", 10)
    assert row["difference"] == pytest.approx(0.5)
    assert (row["both"], row["only_candidate"], row["only_baseline"], row["neither"]) == (2, 5, 0, 3)
    assert row["p_value"] == pytest.approx(2 * 0.5 ** 5)  # exact McNemar, 5 discordant all one way
    table = comparison_table(out)
    assert "| PushCube-v1 | train | 20.0 [" in table and "+50.0 [" in table


def test_mismatched_episodes_are_errors_naming_the_setting(tmp_path):
    base = _report(tmp_path / "a", "base", {"train": [0] * 10})
    with pytest.raises(ValueError, match="eval.seed and eval.num_episodes"):
        compare_reports([base, _report(tmp_path / "b", "x", {"train": [0] * 10}, seed0=2000)])
    with pytest.raises(ValueError, match="env.image_size differs: 64 .* vs 32"):
        compare_reports([base, _report(tmp_path / "c", "y", {"train": [0] * 10}, image_size=32)])
    sampled = [_report(tmp_path / f"t{t}", f"t{t}", {"train": [0] * 10}) for t in (3, 5)]
    for path, t in zip(sampled, (0.3, 0.5)):  # two sampled evaluations at other temperatures
        data = json.loads((path / "report.json").read_text())
        data["config"]["eval"] = {"deterministic": False, "temperature": t}
        (path / "report.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="eval.temperature differs: 0.3 .* vs 0.5"):
        compare_reports(sampled)
    with pytest.raises(FileNotFoundError, match="no eval report at"):
        compare_reports([base, tmp_path / "missing"])
    with pytest.raises(ValueError, match="no candidate result shares"):
        compare_reports([base, _report(tmp_path / "d", "z", {"wide_pose": [0] * 10})])


def test_cli_prints_the_table_and_exits_2_on_bad_input(tmp_path, capsys):
    from vlarl.cli import main

    base = _report(tmp_path / "a", "base", {"train": [0] * 10})
    cand = _report(tmp_path / "b", "rl", {"train": [1] * 10})
    assert main(["compare", str(base), str(cand), "--json", str(tmp_path / "c.json")]) == 0
    assert "+100.0 [" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["rows"][0]["only_candidate"] == 10
    assert main(["compare", str(base)]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err
    # --baseline: the candidate becomes the baseline
    assert main(["compare", str(base), str(cand), "--baseline", "rl"]) == 0
    out = capsys.readouterr().out
    assert "baseline rl." in out and "| base | 0.0 [" in out and "-100.0 [" in out
    assert main(["compare", str(base), str(cand), "--baseline", "nobody"]) == 2
    assert "choose one of ['base', 'rl']" in capsys.readouterr().err
