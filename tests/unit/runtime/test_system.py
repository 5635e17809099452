"""vlarl.runtime.system: the peak memory of a process tree (real child processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from vlarl.runtime.system import tree_peak_rss_mb


def test_tree_peak_rss_counts_a_child_that_held_300_mb():
    hold = ("import sys, time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            "print('ok', flush=True); time.sleep(30)")
    others = tree_peak_rss_mb()["num_children"]  # e.g. multiprocessing's resource tracker
    child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ok"
        mem = tree_peak_rss_mb()
    finally:
        child.kill()
        child.wait()
    assert mem["num_children"] == others + 1
    assert mem["largest_child"] >= 300, mem
    assert abs(mem["tree"] - (mem["main"] + mem["children"])) < 0.2
    assert mem["main"] > 20  # this test process (torch imported by conftest) holds more than that
    # PSS: the child's 300 MB are private (counted whole), shared library pages are split
    assert 300 + 20 < mem["tree_pss_now"] <= mem["tree"], mem
    t0 = time.perf_counter()
    assert tree_peak_rss_mb()["num_children"] == others  # the child is gone
    assert time.perf_counter() - t0 < 1.0


QUIET = ("import sys; "
         "from vlarl.policies import TokenVLAConfig, build_policy, load_policy; "
         "p = build_policy(TokenVLAConfig(chunk_size=2, action_dim=7)); "
         "p.save_pretrained(sys.argv[1]); load_policy(sys.argv[1])")


def test_model_loads_and_saves_print_no_library_noise_unless_verbose(tmp_path):
    """Building, saving and loading a tiny token VLA (real transformers + peft): no weight
    bars, no peft/transformers deprecation warning; VLARL_VERBOSE=1 shows them again."""
    def stderr(extra: dict, out: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "VLARL_VERBOSE"}
        env.update(extra)
        return subprocess.run([sys.executable, "-c", QUIET, str(tmp_path / out)], env=env,
                              capture_output=True, text=True, timeout=300, check=True).stderr

    quiet = stderr({}, "a")
    assert "Loading weights" not in quiet and "Writing model shards" not in quiet
    assert "is_gradient_checkpointing" not in quiet
    loud = stderr({"VLARL_VERBOSE": "1"}, "b")
    assert "Loading weights" in loud and "is_gradient_checkpointing" in loud
