"""Expert demonstrations: collection (:mod:`.collect`), the on-disk format and SFT samples
(:mod:`.dataset`).

Data flow: ``make_env`` (N worker envs) -> the expert's action at every control step (the
scripted ``expert_actions()``, or a saved policy's deterministic chunks executed one
control step at a time: ``data.expert``, RLDG) -> one row per control step in a Hugging Face ``datasets`` parquet file + ``meta/info.json``
(LeRobot-like) -> :class:`ChunkDataset` turns rows into ``(Obs, actions [k, A])`` samples.
The format is described in ``docs/dataset.md``.

Only ``vlarl.envs`` touches ManiSkill; this module sees the :class:`VecEnv` interface.
"""

from vlarl.data.collect import (
    append_episode,
    collect_demos,
    dataset_features,
    dataset_info,
    dataset_key,
    dataset_path,
    expert_identity,
    is_complete,
    write_dataset,
)
from vlarl.data.dataset import (
    DATA_FILE,
    FORMAT_VERSION,
    INFO_FILE,
    ChunkDataset,
    DatasetError,
    collate_chunks,
    load_demos,
    read_info,
)

__all__ = ["DATA_FILE", "FORMAT_VERSION", "INFO_FILE", "ChunkDataset", "DatasetError",
           "append_episode", "collate_chunks", "collect_demos", "dataset_features",
           "dataset_info", "dataset_key", "dataset_path", "expert_identity", "is_complete",
           "load_demos", "read_info", "write_dataset"]
