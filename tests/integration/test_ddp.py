"""Multi-process training on CPU through the launcher users take: ``accelerate launch
--config_file recipes/accelerate/multi_cpu.yaml`` (2 processes started by Open MPI's mpirun,
gloo DDP) runs the real trainer on the tiny config (tests/scripts/ddp_check.py dumps each
rank's parameters, gradients and rollout hash at every checkpoint). Every run has a timeout,
so a collective that hangs fails the test. A launch that would silently run one process is
refused (last test)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlarl.checkpoint import load

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_check.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")
MULTI_CPU = ROOT / "recipes" / "accelerate" / "multi_cpu.yaml"
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, *args: str, timeout: float = 300,
            cache: Path | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``script`` on 2 CPU processes (the documented command)."""
    cmd = [str(ACCELERATE), "launch", "--config_file", str(MULTI_CPU),
           "--main_process_port", str(_free_port()), str(script), *args]
    env = {**os.environ, **MPI_ENV}
    if cache is not None:
        env["VLARL_CACHE"] = str(cache)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
                          check=False)


def _dumps(out: Path, update: int) -> tuple[dict, dict]:
    return (torch.load(out / f"rank0_update{update}.pt"),
            torch.load(out / f"rank1_update{update}.pt"))


def test_ddp_two_ranks_keep_identical_parameters(tmp_path):
    # an empty cache, as on a fresh machine: both ranks need the tiny model, the local main
    # process builds it (transformers >= 5.24 saves nothing on rank 1), the other loads it
    cache = tmp_path / "cache"
    res = _launch(SCRIPT, str(tmp_path), "--updates", "2", cache=cache)
    assert res.returncode == 0, res.stderr[-3000:]
    (entry,) = (cache / "tiny").glob("paligemma-*")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in entry.iterdir()}
    for update in (1, 2):
        r0, r1 = _dumps(tmp_path, update)
        assert r0["world_size"] == r1["world_size"] == 2
        assert r0["wrapped"] == "DistributedDataParallel"
        # different env seeds per rank -> different rollouts ...
        assert r0["buffer_hash"] != r1["buffer_hash"]
        # ... yet identical gradients (all-reduced) and so identical parameters
        grads = [k for k, g in r0["grads"].items() if g is not None]
        assert len(grads) == len(r0["params"]) > 0
        assert sum(float(r0["grads"][k].abs().sum()) for k in grads) > 0
        for k in grads:
            assert torch.equal(r0["grads"][k], r1["grads"][k]), f"gradient {k} not synchronised"
        for k, p in r0["params"].items():
            assert torch.equal(p, r1["params"][k]), f"parameter {k} differs across ranks"
    # the parameters moved between the two updates, and rank 0 wrote the checkpoints
    r0_1, _ = _dumps(tmp_path, 1)
    r0_2, _ = _dumps(tmp_path, 2)
    assert any(not torch.equal(r0_1["params"][k], r0_2["params"][k]) for k in r0_1["params"])
    ck = load(tmp_path / "run" / "checkpoints" / "update_000002")
    assert ck.meta["world_size"] == 2
    assert len(ck.objects["rng"]) == 2  # every rank's RNG state was gathered
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == [1, 2]
    assert lines[-1]["train/env_steps"] == 2 * 2 * 8  # 2 ranks x 2 decisions x 4 steps, x2 updates
    # rollout/ figures are over both ranks' envs (one env each, 2 decisions of 4 steps)
    assert [r["rollout/env_steps"] for r in lines] == [16.0, 16.0]
    assert [r["rollout/decisions"] for r in lines] == [4.0, 4.0]


def test_ddp_nan_on_one_rank_stops_both_together(tmp_path):
    # rank 1's loss is NaN from update 2 on; max_nan_strikes=2 -> update 2 skipped, update 3 stops
    res = _launch(SCRIPT, str(tmp_path), "--updates", "4", "--nan-rank", "1", "--nan-from", "1",
                    "--max-nan-strikes", "2", timeout=300)
    assert res.returncode != 0
    assert res.stderr.count("NonFiniteError") >= 2, res.stderr[-3000:]  # both ranks, not a hang
    assert "non-finite loss on 2 optimizer steps" in res.stderr       # rank 1 names its tensor
    assert "algo.max_nan_strikes=2" in res.stderr
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["update_000001", "update_000002"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in lines] == [1, 2]
    assert lines[1]["algo/skipped_steps"] == 1.0 and lines[1]["algo/optimizer_steps"] == 0.0
    # rank 0's own loss was finite: the all-reduced gradient is what it sees as non-finite
    assert lines[1]["algo/nonfinite"] in ("grad_norm", "other_rank")
    # the skipped step left the parameters where update 1 put them, on both ranks
    r0_1, _ = _dumps(tmp_path, 1)
    r0_2, r1_2 = _dumps(tmp_path, 2)
    for k, p in r0_1["params"].items():
        assert torch.equal(p, r0_2["params"][k]) and torch.equal(p, r1_2["params"][k])
        assert torch.isfinite(p).all()
    last = load(tmp_path / "run" / "checkpoints" / "update_000002")
    for k, t in last.tensors["trainable"].items():
        assert torch.equal(t, r0_1["params"][k]), k


def test_two_ranks_update_as_one_process_on_their_union(tmp_path):
    # tests/scripts/ddp_update_check.py: ranks hold 8 and 12 valid decisions of one rollout;
    # PPO normalises advantages over the union and both algorithms weight each rank's loss by
    # its share, so the all-reduced gradient is the one-process gradient on all the data
    script = ROOT / "tests" / "scripts" / "ddp_update_check.py"
    res = _launch(script, str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["world_size"] == r1["world_size"] == 2
    for algo in ("ppo", "grpo"):
        single = r0[algo]["single"]
        assert sum(float(g.abs().sum()) for g in single.values()) > 0
        for mode in ("global", "local"):
            assert r0[algo][mode].keys() == r1[algo][mode].keys() == single.keys()
            for k in single:
                assert torch.equal(r0[algo][mode][k], r1[algo][mode][k]), (algo, mode, k)
        rel = {mode: max(float((r0[algo][mode][k] - g).norm() / (g.norm() + 1e-12))
                         for k, g in single.items()) for mode in ("global", "local")}
        assert rel["global"] < 1e-5, (algo, rel)
        # per-rank statistics (the identity all_reduce_sum) give another gradient
        assert rel["local"] > 0.05, (algo, rel)


def test_accelerate_launch_that_would_run_alone_is_refused(tmp_path):
    """``accelerate launch --cpu --num_processes 2`` starts one plain process: vlarl says so at
    start-up (before any env or model) instead of training alone."""
    cmd = [str(ACCELERATE), "launch", "--cpu", "--num_processes", "2", "-m", "vlarl", "train",
           "--train.output_dir", str(tmp_path / "run")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
                         env={**os.environ, **MPI_ENV})
    assert res.returncode != 0
    assert "asked for 2 processes but started this one alone" in res.stderr, res.stderr[-2000:]
    assert "recipes/accelerate/multi_cpu.yaml" in res.stderr
    assert not (tmp_path / "run").exists()
