"""PreemptionHandler: real signals, in-process and in a real child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vlarl.runtime.preemption import PreemptionHandler

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vlarl.runtime.preemption import PreemptionHandler
    out = Path(sys.argv[1])
    with PreemptionHandler() as stop:
        (out / "ready").write_text("1")
        updates = 0
        while not stop.requested:       # one "update" per iteration; check at the safe point
            time.sleep(0.02)
            updates += 1
        (out / "preempted").write_text(f"{stop.signal_name} {updates}")
    sys.exit(0)
""")


def _wait_for(path: Path, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def test_sigterm_in_child_writes_marker_and_exits_zero(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env)
    try:
        _wait_for(tmp_path / "ready", 30)
        t0 = time.monotonic()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 5
    finally:
        if child.poll() is None:
            child.kill()
    name, updates = (tmp_path / "preempted").read_text().split()
    assert name == "SIGTERM" and int(updates) >= 0


def test_flag_second_sigint_and_handler_restore():
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with PreemptionHandler() as stop:
        assert not stop.requested and stop.signal_name is None
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs at the next bytecode boundary of the main thread
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGTERM) == old_term
    assert signal.getsignal(signal.SIGINT) == old_int


class _FakeAccelerator:
    """Stands in for accelerate's reduce over 2 ranks where the OTHER rank got a signal."""

    num_processes = 2
    device = "cpu"

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        return tensor + 1.0


def test_request_and_requested_on_any():
    stop = PreemptionHandler()
    assert stop.requested_on_any(None) is False
    assert stop.requested_on_any(_FakeAccelerator()) is True  # another rank was signalled
    stop.request()
    assert stop.requested and stop.requested_on_any(None) is True
