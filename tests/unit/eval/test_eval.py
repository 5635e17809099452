"""vlarl.eval.evaluate with a real tiny VLA checkpoint and real ManiSkill envs (few, short episodes)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import pytest

from vlarl.config import Config, EnvConfig
from vlarl.eval.evaluate import _labels, check_compatible, evaluate_policy, run_eval
from vlarl.eval.report import checkpoint_sha256, plot_success, results_table, row_from_successes
from vlarl.policies import FlowVLAConfig

ENV = {"task": "PickCube-v1", "image_size": 32, "max_episode_steps": 10}
SEED0 = 1_000_000


def _cfg(tmp: Path, **eval_kw) -> Config:
    cfg = Config()
    cfg.env = EnvConfig(**ENV, num_envs=2, backend="inline")
    cfg.eval.num_episodes = eval_kw.pop("num_episodes", 3)
    cfg.eval.seed = SEED0
    cfg.eval.video_episodes = eval_kw.pop("video_episodes", 0)
    for k, v in eval_kw.items():
        setattr(cfg.eval, k, v)
    return cfg


# ----------------------------------------------------------------------------- fast: bad inputs

def test_missing_checkpoint_named(tmp_path):
    missing = str(tmp_path / "no_such_ckpt")
    with pytest.raises(FileNotFoundError, match="no_such_ckpt"):
        run_eval([missing], _cfg(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_split_named(tmp_path):
    cfg = _cfg(tmp_path, splits=["train", "moon_gravity"])
    with pytest.raises(ValueError, match=r"'moon_gravity'.*allowed.*unseen_color"):
        run_eval([str(tmp_path)], cfg, tmp_path / "out")


def test_zero_episodes_named(tmp_path):
    with pytest.raises(ValueError, match="eval.num_episodes=0"):
        run_eval([str(tmp_path)], _cfg(tmp_path, num_episodes=0), tmp_path / "out")
    with pytest.raises(ValueError, match="checkpoints=\\[\\]"):
        run_eval([], _cfg(tmp_path), tmp_path / "out")


def test_labels_unique_and_hash_excludes_report(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"123")
    h1 = checkpoint_sha256(tmp_path / "a", exclude=tmp_path / "a" / "eval")
    (tmp_path / "a" / "eval").mkdir()
    (tmp_path / "a" / "eval" / "report.json").write_text("{}")
    h2 = checkpoint_sha256(tmp_path / "a", exclude=tmp_path / "a" / "eval")
    assert h1 == h2 and list(h1["files"]) == ["w.bin"] and len(h1["sha256"]) == 64
    assert _labels([str(tmp_path / "a"), str(tmp_path / "a")])[0].startswith("0:")


def test_results_table_and_plot(tmp_path):
    rows = [row_from_successes("sft", [1, 0, 1, 1], "train", mean_return=0.75),
            row_from_successes("ppo", [1, 1, 1, 1], "train")]
    md = results_table(rows)
    assert "| sft | train | 4 | 75.0 [30.1, 95.4] | 0.75 |" in md
    assert "| ppo | train | 4 | 100.0 [51.0, 100.0] | - |" in md
    png = plot_success(rows, tmp_path / "s.png")
    assert iio.imread(png).shape[-1] in (3, 4)


# ----------------------------------------------------------------------------- real env + policy

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from vlarl.policies import build_policy

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    build_policy(FlowVLAConfig(tiny="pi0", chunk_size=4)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def two_envs():
    from vlarl.envs import make_env

    env = make_env(EnvConfig(**ENV, num_envs=2, backend="inline"))
    yield env
    env.close()


@pytest.mark.slow
def test_evaluate_policy_schedule_free(checkpoint, two_envs):
    """3 seeds on 2 envs: env 0 auto-resets into seed 3 or env 1 does, the other idles."""
    from vlarl.policies import load_policy

    policy = load_policy(checkpoint)
    seeds = [SEED0, SEED0 + 1, SEED0 + 2]
    check_compatible(policy, two_envs, checkpoint)
    a = evaluate_policy(policy, two_envs, seeds, video_episodes=1)
    # The third seed alone, from a fresh reset of env 0 instead of an auto-reset.
    c = evaluate_policy(policy, two_envs, seeds[2:])
    assert [e["seed"] for e in a] == seeds
    assert [e["seed_index"] for e in a] == [0, 1, 2]
    key = ("seed", "success_once", "success_at_end", "return", "length", "instruction")
    assert tuple(c[0][k] for k in key) == tuple(a[2][k] for k in key)
    assert all(1 <= e["length"] <= ENV["max_episode_steps"] for e in a)
    assert a.actions_per_s > 0 and a.episodes_per_min > 0
    # chunk 4, <= 10 steps: <= 3 decision frames + the final one, all 32x32 RGB.
    assert sorted(a.frames) == [0] and 2 <= len(a.frames[0]) <= 4
    assert a.frames[0][0].shape == (32, 32, 3)


@pytest.mark.slow
def test_action_dim_mismatch_named(checkpoint, two_envs):
    from vlarl.policies import load_policy

    wrong = load_policy(checkpoint, action_dim=4)
    with pytest.raises(ValueError, match="action_dim=4.*expects action_dim=7"):
        check_compatible(wrong, two_envs, checkpoint)


@pytest.mark.slow
def test_state_size_mismatch_named(checkpoint, two_envs):
    """policy.state_sizes (SFT writes the demos' lengths) against PickCube's 20-value state."""
    from vlarl.policies import load_policy

    check_compatible(load_policy(checkpoint, state_sizes=[20]), two_envs, checkpoint)
    wrong = load_policy(checkpoint, state_sizes=[9, 16])
    with pytest.raises(ValueError, match=r"env 'PickCube-v1' gives a state of 20 values, and the "
                                         r"policy was trained on states of 9 or 16 values"):
        check_compatible(wrong, two_envs, checkpoint)


@pytest.mark.slow
def test_run_eval_reuses_the_callers_envs(checkpoint, tmp_path):
    """``envs=``: the env made by one run_eval stays open in the caller's dict and the next
    run_eval steps it instead of making another, with the same per-episode results.
    ``eval.point_estimate`` overrides token VLAs only: the flow checkpoint keeps its sampler."""
    cfg = _cfg(tmp_path, num_episodes=2)
    cfg.env = EnvConfig(**ENV, num_envs=1, backend="inline")
    envs: dict = {}
    try:
        first = run_eval([checkpoint], cfg, tmp_path / "a", envs=envs)
        assert list(envs) == [("train", False)]
        env = envs["train", False]
        cfg.eval.point_estimate = "mean"
        again = run_eval([checkpoint], cfg, tmp_path / "b", envs=envs)
        assert list(envs.values()) == [env]
        assert first["results"][0]["episodes"] == again["results"][0]["episodes"]
        assert env.reset([SEED0]).state.shape[0] == 1  # still open
        cfg.eval.splits = ["train", "unseen_color"]  # one env set at a time: the next split's
        two = run_eval([checkpoint], cfg, tmp_path / "c", envs=envs)  # replaces the train one
        assert list(envs) == [("unseen_color", False)] and envs["unseen_color", False].split == "unseen_color"
        assert two["results"][0]["episodes"] == again["results"][0]["episodes"]
    finally:
        for e in envs.values():
            e.close()


def test_eval_temperature_reaches_token_checkpoints(tmp_path, capsys):
    """``eval.temperature`` sets the sampler of a sampled evaluation (eval loads each
    checkpoint with its saved config, so ``policy.temperature`` cannot): near 0 the sampled
    episodes are the greedy ones, at the checkpoint's own 1.0 they are not."""
    from vlarl.policies import TokenVLAConfig, build_policy

    ck = str(tmp_path / "token")
    build_policy(TokenVLAConfig(chunk_size=4, action_dim=7, temperature=1.0)).save_pretrained(ck)
    cfg = _cfg(tmp_path, num_episodes=2)
    cfg.env = EnvConfig(**ENV, num_envs=1, backend="inline", reward_mode="normalized_dense")
    envs: dict = {}
    try:
        def episodes(out: str, **kw):
            for k, v in kw.items():
                setattr(cfg.eval, k, v)
            return run_eval([ck], cfg, tmp_path / out, envs=envs)["results"][0]["episodes"]

        greedy = episodes("greedy", deterministic=True, temperature=None)
        cfg.policy.temperature = 0.3  # as `vlarl eval --policy.temperature 0.3` would: said, not used
        own = episodes("own", deterministic=False, temperature=None)
        assert "samples with its saved policy.temperature=1.0, not the run config's 0.3 (set " \
            "--eval.temperature" in capsys.readouterr().err
        cold = episodes("cold", deterministic=False, temperature=1e-6)
    finally:
        for e in envs.values():
            e.close()
    returns = [[e["return"] for e in eps] for eps in (greedy, own, cold)]
    assert returns[2] == returns[0] and returns[1] != returns[0], returns
    data = json.loads((tmp_path / "cold" / "report.json").read_text())
    assert data["config"]["eval"]["temperature"] == 1e-6


def test_run_eval_report_files(checkpoint, tmp_path, capsys):
    cfg = _cfg(tmp_path, num_episodes=3, video_episodes=1)
    cfg.env = EnvConfig(**ENV, num_envs=1, backend="inline")  # in-process: no worker start-up
    out = tmp_path / "report"
    report = run_eval([checkpoint, checkpoint], cfg, out)
    printed = capsys.readouterr().out  # the console gets the table and where the report is
    assert printed.count("| train | 3 |") == 2 and "McNemar" in printed
    assert f"report: {out / 'report.md'}" in printed and str(out / "report.json") in printed
    for name in ("report.json", "report.md", "success.png", "manifest.json"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    assert {"vlarl_version", "git_commit", "checkpoints", "config", "seeds", "results",
            "comparisons"} <= set(data)
    assert data["seeds"] == [SEED0, SEED0 + 1, SEED0 + 2]
    assert len(data["checkpoints"]) == 2 and len(data["checkpoints"][0]["sha256"]) == 64
    assert data["checkpoints"][0]["sha256"] == data["checkpoints"][1]["sha256"]
    r0, r1 = data["results"]
    assert r0["n"] == r1["n"] == 3 and len(r0["episodes"]) == 3
    assert 0.0 <= r0["ci_low"] <= r0["success_rate"] <= r0["ci_high"] <= 1.0
    # Same checkpoint twice -> identical per-episode vectors and a zero paired difference.
    assert r0["episodes"] == r1["episodes"]
    (cmp,) = data["comparisons"]
    assert cmp["difference"] == 0.0 and cmp["p_value"] == 1.0 and cmp["n"] == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["numbers"]) == 2 * 8
    assert {n["n"] for n in manifest["numbers"]} == {3}
    assert manifest["numbers"][0]["seeds"] == data["seeds"]
    md = (out / "report.md").read_text()
    assert md.count("| train | 3 |") == 2 and "McNemar" in md
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 2  # first episode of each checkpoint
    frames = iio.imread(videos[0])
    assert frames.ndim == 4 and frames.shape[2] == 256 and frames.shape[0] >= 2
    assert report["results"][0]["n"] == 3
    # vlarl compare on the real report reproduces eval's own in-report comparison
    from vlarl.eval.compare import compare_reports

    (row,) = compare_reports([out, out / "report.json"])["rows"]
    stats = {k: v for k, v in cmp.items() if k not in ("baseline", "candidate")}  # paths there
    assert {k: row[k] for k in stats} == stats and row["candidate"] != row["baseline"]
