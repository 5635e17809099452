"""wandb logging that never blocks training and never kills it.

``offline`` and ``disabled`` never touch the network. In ``online`` mode a failed
``wandb.init`` (no network, bad key) falls back to offline with a warning; a failing
``log`` call disables wandb for the rest of the run. The local metrics.jsonl (written by
:class:`vlarl.checkpoint.MetricsLogger`) is the source of truth.
"""

from __future__ import annotations

import os
import warnings
from typing import Any


class WandbTracker:
    def __init__(self, enabled: bool, mode: str, project: str, run_dir: str, config: dict,
                 run_id: str | None = None):
        self.run = None
        if not enabled or mode == "disabled":
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=project, dir=run_dir, config=config, mode=mode, id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(init_timeout=30, silent=True),
            )
        except Exception as err:  # noqa: BLE001 - wandb must never kill training
            warnings.warn(f"wandb.init failed ({err!r}); continuing with metrics.jsonl only")
            self.run = None

    @property
    def run_id(self) -> str | None:
        return getattr(self.run, "id", None)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(metrics, step=step)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"wandb.log failed ({err!r}); disabling wandb for this run")
            self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:  # noqa: BLE001, S110
                pass
            self.run = None
