"""The on-disk demonstrations format (``docs/dataset.md``) read back: :func:`read_info`,
:func:`load_demos`, and :class:`ChunkDataset`, which turns rows into SFT samples
``(Obs, actions [k, A])``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vlarl.types import Obs

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped when the on-disk layout changes (part of the cache key, so old caches are not reused)."""
DATA_FILE = "data/train-00000-of-00001.parquet"
INFO_FILE = "meta/info.json"
class DatasetError(ValueError):
    """A missing, empty or corrupted demonstrations dataset; the message names the file."""


# ----------------------------------------------------------------------------- loading

def read_info(path: str | Path) -> dict:
    """``meta/info.json`` of a dataset directory; DatasetError naming the file if unusable."""
    f = Path(path).expanduser() / INFO_FILE
    if not f.is_file():
        raise DatasetError(f"not a vlarl dataset: {f} is missing (collect with `vlarl collect`)")
    try:
        info = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"corrupted dataset metadata {f}: {err}") from None
    for k in ("data_files", "total_frames", "action_dim"):
        if k not in info:
            raise DatasetError(f"corrupted dataset metadata {f}: key {k!r} is missing")
    return info


def load_demos(path: str | Path):
    """Load a dataset directory as one ``datasets.Dataset`` (rows = control steps)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset
    from datasets.table import InMemoryTable

    root = Path(path).expanduser()
    info = read_info(root)
    tables = []
    for rel in info["data_files"]:
        f = root / rel
        try:
            tables.append(pq.read_table(f))
        except (OSError, pa.ArrowException) as err:
            raise DatasetError(f"corrupted or missing dataset file {f}: {err}") from None
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if table.num_rows == 0:
        raise DatasetError(f"empty dataset: {root / info['data_files'][0]} has no rows")
    if table.num_rows != info["total_frames"]:
        raise DatasetError(f"{root / INFO_FILE} says total_frames={info['total_frames']} but "
                           f"the data files hold {table.num_rows} rows")
    return Dataset(InMemoryTable(table))


# ----------------------------------------------------------------------------- SFT samples

PadMode = Literal["hold", "repeat"]


class ChunkDataset(torch.utils.data.Dataset):
    """Sample t of an episode -> observation t and the expert actions ``t .. t+k-1``.

    Past the episode's last step the chunk is padded (``pad``):

    * ``"hold"``: zeros in every dimension except the gripper (last dim), which repeats
      its last value: "stay still, keep the grasp" under delta controllers
      (``pd_ee_delta_pose`` / ``pd_ee_delta_pos`` / ``pd_joint_delta_pos``);
    * ``"repeat"``: repeat the last action: right for absolute-position controllers.
    """

    def __init__(self, ds, chunk_size: int, pad: PadMode = "hold"):
        if pad not in ("hold", "repeat"):
            raise ValueError(f"pad={pad!r} is not allowed; choose one of ['hold', 'repeat']")
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        cols = ds.with_format("numpy").select_columns(
            ["episode_index", "frame_index", "action"])[:]
        ep, frame = cols["episode_index"], cols["frame_index"]
        starts = np.r_[True, ep[1:] != ep[:-1]]
        if not np.array_equal(frame, _counter(starts)):
            raise DatasetError("rows must be grouped by episode and ordered by frame_index")
        ends = np.r_[np.flatnonzero(starts)[1:], len(ep)]  # exclusive end of each episode
        self.last = np.repeat(ends - 1, np.diff(np.r_[np.flatnonzero(starts), len(ep)]))
        self.actions = torch.from_numpy(np.asarray(cols["action"], dtype=np.float32))
        self.chunk_size, self.pad = chunk_size, pad
        self.image_cols = sorted(c for c in ds.column_names if c == "image" or
                                 c.startswith("image_"))
        self.rows = ds.with_format("numpy", columns=self.image_cols + ["state", "instruction"])

    def __len__(self) -> int:
        return len(self.actions)

    def action_chunk(self, i: int) -> torch.Tensor:
        """float32 ``[k, A]``: the actions of steps ``i .. i+k-1``, padded past the end."""
        t = np.arange(i, i + self.chunk_size)
        chunk = self.actions[np.minimum(t, self.last[i])].clone()
        if self.pad == "hold":
            chunk[torch.from_numpy(t > self.last[i]), :-1] = 0.0
        return chunk

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[int(i)]
        return {"images": torch.from_numpy(np.stack([r[c] for c in self.image_cols])),
                "state": torch.as_tensor(r["state"], dtype=torch.float32),
                "instruction": str(r["instruction"]), "actions": self.action_chunk(int(i))}


def _counter(starts: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... restarting at every True of ``starts`` (the expected frame_index)."""
    idx = np.arange(len(starts))
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def collate_chunks(items: list[dict[str, Any]]) -> tuple[Obs, torch.Tensor | None]:
    """Stack ``ChunkDataset`` items into ``(Obs [B], actions float32 [B, k, A])``; states
    of different lengths (a multi-task batch, ``data.extra_tasks``) are zero-padded to the
    longest, as the policies pad them at inference (``policies.common.pad_state``). Items
    with a ``privileged`` state (distillation data of a state-based student) keep it; items
    without actions (grounding scenes) give ``None``."""
    width = max(it["state"].shape[-1] for it in items)
    priv = (torch.stack([it["privileged"] for it in items])
            if all("privileged" in it for it in items) else None)
    obs = Obs(images=torch.stack([it["images"] for it in items]),
              state=torch.stack([torch.nn.functional.pad(torch.as_tensor(it["state"]).float(),
                                                         (0, width - it["state"].shape[-1]))
                                 for it in items]),
              instructions=[it["instruction"] for it in items], privileged=priv)
    return obs, (torch.stack([it["actions"] for it in items]) if "actions" in items[0] else None)
