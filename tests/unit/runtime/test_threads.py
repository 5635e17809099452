"""vlarl.runtime.threads: the intra-op threads each command's torch gets (pure plan, real
commands in fresh processes, the busy-core measurement against a real spinning process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vlarl.runtime.threads import busy_cores, plan_threads

SHOW = ("import sys; from vlarl.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "import os, torch; print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads())")
USER_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "VLARL_SHARED_CORES", "VLARL_TORCH_THREADS")


def _run(argv: list[str], **env_extra: str) -> tuple[str, int]:
    """(OMP_WAIT_POLICY, torch threads) after ``vlarl ARGV`` in a fresh process whose thread
    variables are only ``env_extra`` (the suite's own OMP_NUM_THREADS=1 removed)."""
    env = {k: v for k, v in os.environ.items() if k not in USER_VARS}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", SHOW, *argv], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    policy, threads = out.stdout.strip().splitlines()[-1].split()
    return policy, int(threads)


def test_plan_one_thread_per_free_core():
    assert plan_threads("train", {}, cores=8).torch_threads == 8
    assert plan_threads("eval", {}, cores=2, busy_cores=0.2).torch_threads == 2
    # two ranks on one machine (Open MPI / torchrun say how many): the cores are split
    assert plan_threads("train", {"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, cores=8).torch_threads == 4
    assert plan_threads("train", {"LOCAL_WORLD_SIZE": "4"}, cores=2).torch_threads == 1
    # another job keeps 1.7 of 2 cores busy: one thread, said as shared
    for command in ("sft", "eval"):
        busy = plan_threads(command, {}, cores=2, busy_cores=1.7)
        assert (busy.torch_threads, busy.shared, busy.automatic) == (1, True, True)
        assert "1.7 of 2 cores busy" in busy.reason
    assert plan_threads("train", {}, cores=16, busy_cores=1.0).torch_threads == 15
    assert plan_threads("train", {"VLARL_SHARED_CORES": "1"}, cores=2).torch_threads == 1
    assert plan_threads("compare", {}, cores=2).torch_threads is None  # no torch work


def test_plan_the_user_decides():
    user = plan_threads("eval", {"VLARL_TORCH_THREADS": "2"}, cores=2, busy_cores=2.0)
    assert (user.torch_threads, user.automatic) == (2, False)
    assert plan_threads("train", {"VLARL_TORCH_THREADS": "3"}, cores=2,
                        busy_cores=2.0).torch_threads == 3
    # a user's (or torchrun's) OMP_NUM_THREADS is torch's own setting: left to torch
    assert plan_threads("eval", {"OMP_NUM_THREADS": "2"}, cores=2).torch_threads is None
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match=f"VLARL_TORCH_THREADS='{bad}'.*positive integer"):
            plan_threads("train", {"VLARL_TORCH_THREADS": bad}, cores=2)


def test_a_command_started_beside_a_busy_core_takes_one_thread():
    loop = "import time\nt = time.time()\nwhile time.time() - t < 60: pass"
    spin = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)]
    try:
        # torch's default was one thread per core (11.7x slower beside another torch job)
        assert _run(["eval", "--help"]) == ("None", 1)
        assert _run(["eval", "--help"], VLARL_TORCH_THREADS="2") == ("None", 2)
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert _run(["train", "--help"], VLARL_SHARED_CORES="1") == ("PASSIVE", max(1, (os.cpu_count() or 1) // 2))
    bad = subprocess.run([sys.executable, "-m", "vlarl", "eval", "--help"], capture_output=True,
                         text=True, timeout=60, check=False,
                         env={**os.environ, "VLARL_TORCH_THREADS": "0"})
    assert bad.returncode == 2 and "VLARL_TORCH_THREADS='0'" in bad.stderr


def test_busy_cores_sees_a_spinning_process():
    loop = "import time\nt = time.time()\nwhile time.time() - t < 20: pass"
    spin = subprocess.Popen([sys.executable, "-c", loop])
    try:
        assert busy_cores(0.5) >= 0.7  # at least the spinning core (others may be busy too)
    finally:
        spin.kill()
        spin.wait()
