"""Demonstrations: real PickCube expert episodes -> parquet -> load -> SFT chunk samples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DEMO_EPISODES, demo_config, session_cache

from vlarl.data import (
    INFO_FILE,
    ChunkDataset,
    DatasetError,
    collate_chunks,
    collect_demos,
    dataset_key,
    dataset_path,
    load_demos,
    read_info,
)

EPISODES = DEMO_EPISODES


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("VLARL_CACHE", str(session_cache(tmp_path_factory)))
    yield collect_demos(demo_config())
    mp.undo()


@pytest.mark.slow
def test_collect_and_load(demos: Path) -> None:
    cfg = demo_config()
    assert demos.name == dataset_key(cfg) and demos.parent.name == "datasets"
    info = read_info(demos)
    ds = load_demos(demos)
    assert {"episode_index", "frame_index", "image", "state", "action", "instruction", "task",
            "reward", "success", "done"} <= set(ds.column_names)
    assert info["total_episodes"] == EPISODES and len(ds) == info["total_frames"]
    assert info["action_dim"] == 7 and info["image_size"] == 32
    stats = info["collection"]
    assert 0.0 < stats["expert_success_rate"] <= 1.0
    assert stats["episodes_attempted"] - stats["episodes_failed"] >= EPISODES  # solved
    np_ds = ds.with_format("numpy")
    cols = np_ds.select_columns(["episode_index", "frame_index", "action", "success", "done"])[:]
    assert cols["action"].shape == (len(ds), 7)
    assert np.abs(cols["action"]).max() <= 1.0 + 1e-6
    for ep in range(EPISODES):
        rows = np.flatnonzero(cols["episode_index"] == ep)
        assert 2 <= len(rows) <= cfg.env.max_episode_steps
        assert cols["frame_index"][rows].tolist() == list(range(len(rows)))
        assert cols["success"][rows[-1]] and cols["done"][rows[-1]]  # kept episodes succeed
        assert not cols["done"][rows[:-1]].any()
    img = np_ds[0]["image"]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 0
    assert ds[0]["instruction"] and ds[0]["task"] == "PickCube-v1"


@pytest.mark.slow
def test_existing_dataset_is_reused(demos: Path) -> None:
    before = (demos / INFO_FILE).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert collect_demos(demo_config()) == demos
    assert time.perf_counter() - t0 < 2.0
    assert (demos / INFO_FILE).stat().st_mtime_ns == before


@pytest.mark.slow
def test_chunks_from_real_demos(demos: Path) -> None:
    chunks = ChunkDataset(load_demos(demos), chunk_size=4)
    obs, actions = collate_chunks([chunks[i] for i in range(5)])
    assert obs.images.shape == (5, 1, 32, 32, 3) and obs.images.dtype == torch.uint8
    assert actions.shape == (5, 4, 7) and obs.state.shape[0] == 5 and len(obs.instructions) == 5
    assert torch.equal(actions[0, 1], chunks.actions[1])  # step t's chunk starts with a_t, a_t+1


def test_corrupted_and_empty_datasets_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="info.json"):
        load_demos(tmp_path / "nothing")
    root = tmp_path / "bad"
    (root / "meta").mkdir(parents=True)
    (root / INFO_FILE).write_text("{not json")
    with pytest.raises(DatasetError, match=r"corrupted dataset metadata .*info\.json"):
        load_demos(root)
    (root / INFO_FILE).write_text(json.dumps(
        {"data_files": ["data/x.parquet"], "total_frames": 1, "action_dim": 7}))
    (root / "data").mkdir()
    (root / "data" / "x.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DatasetError, match=r"corrupted or missing dataset file .*x\.parquet"):
        load_demos(root)
    from datasets import Dataset, Features, Value

    Dataset.from_dict({"episode_index": []}, features=Features(
        {"episode_index": Value("int64")})).to_parquet(str(root / "data" / "x.parquet"))
    with pytest.raises(DatasetError, match=r"empty dataset: .*x\.parquet"):
        load_demos(root)


@pytest.mark.slow
def test_truncated_real_parquet_raises(demos: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(demos, copy)
    f = copy / read_info(copy)["data_files"][0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(DatasetError, match=str(f.name)):
        load_demos(copy)


def _toy_dataset():
    from datasets import Dataset

    acts = [[0.5, 0.5, 1.0], [0.2, 0.1, -1.0], [0.3, 0.3, -1.0], [0.9, 0.9, 1.0]]
    return Dataset.from_dict({
        "episode_index": [0, 0, 0, 1], "frame_index": [0, 1, 2, 0], "action": acts,
        "image": [np.zeros((2, 2, 3), np.uint8)] * 4, "state": [[0.0]] * 4,
        "instruction": ["pick"] * 4})


def test_chunk_padding_hold_and_repeat() -> None:
    def chunk(pad: str, i: int) -> list[list[float]]:
        rows = ChunkDataset(_toy_dataset(), chunk_size=3, pad=pad)[i]["actions"].tolist()
        return [[round(x, 5) for x in r] for r in rows]

    # zero deltas past the end, grasp kept
    assert chunk("hold", 1) == [[0.2, 0.1, -1.0], [0.3, 0.3, -1.0], [0.0, 0.0, -1.0]]
    # episode 1 never borrows episode 0's actions
    assert chunk("hold", 3) == [[0.9, 0.9, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    assert chunk("repeat", 2) == [[0.3, 0.3, -1.0]] * 3
    with pytest.raises(ValueError, match="pad='zeros'.*hold"):
        ChunkDataset(_toy_dataset(), chunk_size=3, pad="zeros")  # type: ignore[arg-type]


def test_dataset_key_and_path(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VLARL_CACHE", str(tmp_path))
    a, b = demo_config(), demo_config()
    b.data.num_workers = 1  # episodes are seeded one by one: same data
    assert dataset_key(a) == dataset_key(b)
    b.env.image_size = 64
    assert dataset_key(a) != dataset_key(b)
    assert dataset_path(a) == tmp_path / "datasets" / dataset_key(a)
    a.data.dataset_dir = str(tmp_path / "mine")
    assert dataset_path(a) == tmp_path / "mine"


WRITE = ("import sys; from datasets import Features, Value; "
         "from pathlib import Path; from vlarl.data.collect import write_dataset; "
         "write_dataset(Path(sys.argv[1]), {'a': [1, 2]}, Features({'a': Value('int64')}), {})")


def test_writing_a_dataset_prints_no_library_bar_unless_verbose(tmp_path):
    """The datasets library's one-batch "Creating parquet" bar is library noise on every
    `vlarl collect`; VLARL_VERBOSE=1 shows it again. The dataset is written either way."""

    def stderr(extra: dict, out: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "VLARL_VERBOSE"}
        env.update(extra)
        return subprocess.run([sys.executable, "-c", WRITE, str(tmp_path / out)], env=env,
                              capture_output=True, text=True, timeout=120, check=True).stderr

    assert "Creating parquet" not in stderr({}, "a")
    assert "Creating parquet" in stderr({"VLARL_VERBOSE": "1"}, "b")
    assert (tmp_path / "a" / "data").is_dir() and (tmp_path / "a" / INFO_FILE).is_file()
