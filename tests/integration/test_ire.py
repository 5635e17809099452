"""iRe-VLA on real parts: the success recorder on a real ManiSkill PushCube env (rows =
executed steps, actions = those sent, only successful episodes kept), its dataset through
``load_demos`` / ``ChunkDataset``, a tiny ``vlarl ire`` run (env-step accounting, SFT moved
the weights, the next round starts from the SFT output), and config errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_env_config

from vlarl.config import Config, ConfigError, EnvConfig, load_config
from vlarl.data import ChunkDataset, collect_demos, load_demos, read_info

pytestmark = pytest.mark.slow  # real envs and a real end-to-end run (still run in CI)

K, MAX_STEPS = 4, 40


def _env_cfg(**kw) -> EnvConfig:
    return tiny_env_config(max_episode_steps=MAX_STEPS, **kw)


def _chunk(env, policy: str, salt: float) -> torch.Tensor:
    """[1, K, 7]: zeros (a failing policy) or the expert's action held for K steps; a per-step
    offset on the x delta makes every executed action distinct (row order is checked)."""
    a = env.expert_actions().float() if policy == "expert" else torch.zeros(1, 7)
    chunk = a[:, None, :].repeat(1, K, 1)
    chunk[0, :, 0] += salt + 1e-4 * torch.arange(K)
    return chunk


def _play(rec, policies: list[str], seed: int) -> list[dict]:
    """Play one episode per entry of ``policies``; return a ledger of what was executed."""
    rec.reset([seed])
    ledger, cur, d = [], {"seed": seed, "actions": [], "success": False}, 0
    while len(ledger) < len(policies):
        chunk = _chunk(rec, policies[len(ledger)], salt=1e-3 * (d % 7))
        step = rec.step_chunk(chunk, reset_seeds=[seed + len(ledger) + 1])
        cur["actions"].append(chunk[0, :int(step.steps[0])].numpy().copy())
        cur["success"] |= bool(step.success_once[0])
        d += 1
        if bool(step.done[0]):
            ledger.append(cur)
            cur = {"seed": seed + len(ledger), "actions": [], "success": False}
    return ledger


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three episodes (zeros = fail, expert twice) recorded, then the first-episode-only mode."""
    from vlarl.envs import make_env
    from vlarl.envs.recorder import SuccessRecorder, write_episodes

    env = make_env(_env_cfg())
    try:
        rec = SuccessRecorder(env)
        ledger = _play(rec, ["zeros", "expert", "expert"], seed=6)
        first = SuccessRecorder(env, first_episode_only=True)
        ledger_first = _play(first, ["expert", "expert"], seed=7)
    finally:
        env.close()
    cfg = Config()
    cfg.env = _env_cfg()
    out = write_episodes(rec.episodes, tmp_path_factory.mktemp("rec") / "successes", cfg,
                         chunk_size=K)
    return {"rec": rec, "ledger": ledger, "first": first, "ledger_first": ledger_first,
            "path": out}


def test_recorder_keeps_exactly_the_successes_with_executed_actions(recorded):
    rec, ledger = recorded["rec"], recorded["ledger"]
    wins = [e for e in ledger if e["success"]]
    assert ledger[0]["success"] is False and len(wins) >= 1  # the scenario held
    executed = [np.concatenate(e["actions"]) for e in ledger]
    assert rec.steps_executed == rec.steps_counted == sum(len(a) for a in executed)
    assert len(executed[0]) == MAX_STEPS  # the zeros episode ran to the time limit
    assert rec.episodes_ended == 3 and rec.episodes_succeeded == len(wins) == len(rec.episodes)
    for ep, want in zip(rec.episodes, wins, strict=True):
        got = np.stack([f["action"] for f in ep.frames])
        assert ep.seed == want["seed"] and len(ep.frames) == sum(len(a) for a in want["actions"])
        np.testing.assert_array_equal(got, np.concatenate(want["actions"]))
        assert [f["done"] for f in ep.frames] == [False] * (len(ep.frames) - 1) + [True]
        assert ep.frames[-1]["success"] and not any(f["success"] for f in ep.frames[:-1])


def test_first_episode_only_counts_what_the_episodic_trainer_counts(recorded):
    first, ledger = recorded["first"], recorded["ledger_first"]
    n0, n1 = (sum(len(a) for a in e["actions"]) for e in ledger)
    assert first.steps_executed == n0 + n1 and first.steps_counted == n0
    assert first.episodes_ended == 1 and len(first.episodes) == int(ledger[0]["success"])


def test_recorded_dataset_loads_and_chunks_are_the_executed_ones(recorded):
    from vlarl.envs.recorder import decision_rows

    wins = [e for e in recorded["ledger"] if e["success"]]
    info = read_info(recorded["path"])
    ds = load_demos(recorded["path"])
    assert len(ds) == info["total_frames"] == sum(len(c) for e in wins for c in e["actions"])
    assert info["total_episodes"] == len(wins) and info["recorder"]["chunk_size"] == K
    rows = decision_rows(ds, info, K)
    assert len(rows) == sum(len(e["actions"]) for e in wins)  # one sample per decision
    chunks = ChunkDataset(ds, K, pad="hold")
    sent = [c for e in wins for c in e["actions"]]
    for row, executed in zip(rows, sent, strict=True):
        got = chunks.action_chunk(int(row)).numpy()
        s = len(executed)
        np.testing.assert_allclose(got[:s], executed, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(got[s:, :-1], 0.0)  # the unexecuted tail: "hold"
        np.testing.assert_array_equal(got[s:, -1], executed[-1, -1])
    item = chunks[int(rows[1])]
    assert item["images"].shape == (1, 32, 32, 3) and item["state"].shape == (16,)
    with pytest.raises(ValueError, match="policy.chunk_size"):
        decision_rows(ds, info, K + 1)


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    cfg = Config()
    cfg.env = _env_cfg()
    cfg.data.dataset_dir = str(tmp_path_factory.mktemp("demos") / "demos")
    cfg.data.num_episodes, cfg.data.num_workers = 2, 1
    return collect_demos(cfg)


def test_sft_samples_are_all_demo_rows_plus_recorded_decisions(recorded, demos):
    from vlarl.methods.sft import sft_dataset

    data, sizes = sft_dataset([demos, recorded["path"]], K, 7)
    n_demo = read_info(demos)["total_frames"]
    n_dec = sum(len(e["actions"]) for e in recorded["ledger"] if e["success"])
    assert sizes == [n_demo, n_dec] and len(data) == n_demo + n_dec
    first = next(e for e in recorded["ledger"] if e["success"])["actions"][0]
    np.testing.assert_allclose(data[n_demo]["actions"].numpy(), first, atol=1e-7)


def _ire_args(out: Path, demos: Path) -> list[str]:
    # 2 rounds x 2 GRPO updates of 2 envs (1 group of G=2), 8-step episodes = 2 decisions
    return ["ire", "--ire.output_dir", str(out), "--ire.rounds", "2", "--ire.rl_updates", "2",
            "--ire.sft_steps", "3", "--data.dataset_dir", str(demos),
            "--env.task", "PushCube-v1", "--env.image_size", "32", "--env.num_envs", "2",
            "--env.backend", "inline", "--env.max_episode_steps", "8", "--policy.chunk_size", "4",
            "--policy.value_head", "false", "--algo.name", "grpo", "--algo.num_generations", "2",
            "--algo.num_mini_batches", "1", "--algo.num_ppo_epochs", "1",
            "--train.rollout_steps", "2", "--train.learning_rate", "1e-3",
            "--sft.batch_size", "4", "--sft.learning_rate", "1e-3"]


def test_vlarl_ire_tiny_run(tmp_path, demos):
    from safetensors.torch import load_file

    from vlarl.cli import main

    out = tmp_path / "ire"
    assert main(_ire_args(out, demos)) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] and len(s["rounds"]) == 2 and s["total_rl_updates"] == 4
    for r, rd in enumerate(s["rounds"]):
        rows = [json.loads(x) for x in (out / f"round_{r}/rl/metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and rd["train_seed"] == 1 + r
        # the trainer's counter = the sum of its per-update steps = the recorder's count
        assert rd["env_steps"] == sum(x["rollout/env_steps"] for x in rows)
        assert rd["env_steps"] == rd["recorder"]["steps_counted"] <= rd["recorder"]["steps_executed"]
        assert rd["rl_episodes"] == 4 == rd["recorder"]["episodes_ended"]
        if rd["successes_recorded"] == 0:  # 8-step episodes of a random VLA: truncated
            assert rd["env_steps"] == 2 * 2 * 8
        assert rd["sft"]["steps"] == 3 and rd["sft"]["samples_demos"] == read_info(demos)["total_frames"]
        assert len((out / f"round_{r}/sft/metrics.jsonl").read_text().splitlines()) == 3
    assert s["total_env_steps"] == sum(rd["env_steps"] for rd in s["rounds"])
    assert s["rounds"][1]["env_steps_cumulative"] == s["total_env_steps"]

    def weights(d: Path) -> dict[str, torch.Tensor]:
        return load_file(str(d / "base" / "model.safetensors"))

    merged_rl = weights(_merged(out / "round_0/rl/policy", tmp_path / "merged"))
    sft0 = weights(out / "round_0/sft")
    assert merged_rl.keys() == sft0.keys()
    assert any(not torch.equal(merged_rl[k], sft0[k]) for k in sft0)  # SFT moved the weights
    # round 1's RL trained LoRA on top of round 0's SFT output: its frozen base is that output
    base1 = weights(out / "round_1/rl/policy")
    assert all(torch.equal(base1[k], sft0[k]) for k in sft0)
    assert s["rounds"][1]["start_policy"] == str(out / "round_0/sft")
    final, sft1 = weights(out / "policy"), weights(out / "round_1/sft")
    assert all(torch.equal(final[k], sft1[k]) for k in sft1)


def test_sft_only_control_arm(tmp_path, demos, capsys):
    """ire.rl_updates=0: the same SFT phases on the demos alone from policy.path - no env
    steps, each round fine-tunes the previous round's output; policy.path is required."""
    from safetensors.torch import load_file

    from vlarl.cli import main
    from vlarl.policies import build_policy

    args = _ire_args(tmp_path / "ctl", demos) + ["--ire.rl_updates", "0"]
    assert main(args) == 2 and "policy.path" in capsys.readouterr().err
    cfg = load_config(None, args[1:])
    build_policy(cfg.policy).save_pretrained(tmp_path / "base")
    assert main(args + ["--policy.path", str(tmp_path / "base"), "--train.overwrite", "true"]) == 0
    s = json.loads((tmp_path / "ctl" / "summary.json").read_text())
    assert s["complete"] and s["total_env_steps"] == 0 == s["total_rl_updates"]
    assert not (tmp_path / "ctl" / "round_0" / "rl" / "metrics.jsonl").exists()
    assert [rd["sft"]["steps"] for rd in s["rounds"]] == [3, 3]
    assert [rd["sft"]["samples_rl"] for rd in s["rounds"]] == [0, 0]
    assert s["rounds"][1]["start_policy"] == str(tmp_path / "ctl" / "round_0" / "sft")
    w0, w1 = (load_file(str(tmp_path / "ctl" / f"round_{r}/sft/base/model.safetensors"))
              for r in (0, 1))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # round 1 trained further


def _merged(path: Path, out: Path) -> Path:
    """The RL policy with its adapters merged, saved like an SFT output (same key names)."""
    from vlarl.policies import load_policy

    load_policy(path, use_lora=False).save_pretrained(out)
    return out


@pytest.mark.parametrize("override, key", [
    (["--ire.rounds", "0"], "ire.rounds"), (["--ire.rl_updates", "-1"], "ire.rl_updates"),
    (["--ire.rl_updates", "0", "--ire.sft_steps", "0"], "ire.rl_updates"),
    (["--ire.sft_steps", "-1"], "ire.sft_steps"), (["--ire.output_dir="], "ire.output_dir")])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, override)


@pytest.mark.parametrize("override, key", [
    (["--sft.full_finetune", "false"], "sft.full_finetune"),
    (["--algo.name", "rpd"], "algo.name"), (["--train.resume", "true"], "train.resume"),
    (["--policy.action_dim", "4"], "policy.action_dim"),
    (["--env.image_size", "64"], "env.image_size")])
def test_bad_input_fails_before_any_env_starts(tmp_path, demos, no_env, capsys, override, key):
    from vlarl.cli import main

    assert main(_ire_args(tmp_path / "ire", demos) + override) == 2
    assert key in capsys.readouterr().err


def test_missing_demos_and_non_empty_output_dir(tmp_path, demos, no_env, capsys):
    from vlarl.cli import main

    assert main(_ire_args(tmp_path / "ire", tmp_path / "nothing")) == 2
    assert "data.dataset_dir" in capsys.readouterr().err
    (tmp_path / "ire").mkdir()
    (tmp_path / "ire" / "old").write_text("x")
    assert main(_ire_args(tmp_path / "ire", demos)) == 2
    assert "ire.output_dir" in capsys.readouterr().err
