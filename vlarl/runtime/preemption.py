"""Graceful preemption: turn SIGTERM / SIGINT into a flag the trainer checks at safe points.

Clusters (SLURM, Kubernetes, spot VMs) send SIGTERM some seconds before killing a job. A
handler that only sets a flag lets the trainer finish the current update, write a
checkpoint and exit 0, instead of dying mid-write. A second Ctrl-C raises
``KeyboardInterrupt`` at once, for a user who really wants out.

Usage in the trainer::

    with PreemptionHandler() as stop:
        for update in range(start, num_updates):
            ...                                   # collect + update + log
            if stop.requested_on_any(accelerator):  # all ranks agree
                save(update); break
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class PreemptionHandler:
    """Context manager installing flag-setting handlers for ``signals``; restores the old
    handlers on exit. Must be entered in the main thread (a Python rule for signals)."""

    def __init__(self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self._old: dict[signal.Signals, _Handler] = {}
        self._received: list[signal.Signals] = []

    def __enter__(self) -> PreemptionHandler:  # noqa: PYI034 - py3.10 target has no Self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionHandler must be entered in the main thread "
                               f"(current: {threading.current_thread().name!r})")
        for sig in self.signals:
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT and signal.SIGINT in self._received:
            raise KeyboardInterrupt("second SIGINT: stopping without a checkpoint")
        self._received.append(sig)
        log.warning("received %s: will checkpoint and stop after the current update "
                    "(Ctrl-C again to stop now)", sig.name)

    def request(self) -> None:
        """Ask for a stop programmatically (e.g. a wall-clock budget ran out)."""
        self._received.append(signal.SIGTERM)

    @property
    def requested(self) -> bool:
        """True once any handled signal (or :meth:`request`) arrived."""
        return bool(self._received)

    @property
    def signal_name(self) -> str | None:
        """Name of the first signal received (for the log / exit message)."""
        return self._received[0].name if self._received else None

    def requested_on_any(self, accelerator: Any = None) -> bool:
        """True if ANY process got a stop request, so all ranks stop at the same update.

        ``accelerator`` is duck-typed: anything with ``reduce(tensor, reduction="sum")`` and
        ``device`` (an ``accelerate.Accelerator``); None means single-process. A collective
        call: every rank must call it at the same point.
        """
        if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
            return self.requested
        import torch

        flag = torch.tensor([1.0 if self.requested else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
