"""The main job end to end: `vlarl quickstart --smoke` runs every stage on real parts
(ManiSkill envs, tiny PaliGemma VLA, peft, accelerate), prints the table, and a rerun is
served from the stage cache."""

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def test_quickstart_smoke_runs_every_stage_and_caches(tmp_path):
    run_dir = tmp_path / "qs"
    cmd = [sys.executable, "-m", "vlarl", "quickstart", "--smoke", "--run-dir", str(run_dir)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "VLARL_CACHE": str(tmp_path / "cache")})
    first = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr[-4000:]
    for stage in ("collect", "sft", "rl", "distill", "eval"):
        assert (run_dir / f"stage_{stage}.json").is_file(), stage
    table = (run_dir / "summary.md").read_text()
    assert table.count("\n| ") == 6 + 2  # 3 policies x 2 splits greedy, base and RL sampled
    assert "SFT base" in table and "RL (GRPO+LoRA)" in table and "student" in table
    assert table.count("| sampled | train |") == 2 and table.count("| greedy |") == 6
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert {r["split"] for r in report["results"]} == {"train", "unseen_color"}
    assert all(r["n"] == 4 for r in report["results"])
    assert (run_dir / "eval" / "success.png").stat().st_size > 1000
    sampled = json.loads((run_dir / "eval" / "sampled" / "report.json").read_text())
    assert sampled["config"]["eval"]["deterministic"] is False
    assert [(r["split"], r["n"]) for r in sampled["results"]] == [("train", 4)] * 2
    assert len(sampled["comparisons"]) == 1  # RL vs base, paired on the same seeds
    # rerun: every stage comes from the cache
    t0 = time.perf_counter()
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                           env={**__import__("os").environ, "VLARL_CACHE": str(tmp_path / "cache")})
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count(": cached") == 5
    assert time.perf_counter() - t0 < first / 2
