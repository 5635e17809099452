"""The CLI answers fast, lists documented options, and the doctor names the render device."""

import os
import subprocess
import sys

from helpers import run_cpu_timed

VLARL = [sys.executable, "-m", "vlarl"]


def _run(args, env=None, timeout=120):
    return subprocess.run(VLARL + args, check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_is_fast_and_lists_commands():
    out, elapsed = run_cpu_timed(VLARL + ["--help"], timeout=120)
    assert out.returncode == 0
    for cmd in ("collect", "sft", "train", "eval", "distill", "doctor", "quickstart", "bench",
                "drift", "rldg"):
        assert cmd in out.stdout
    assert elapsed < 2.0, f"vlarl --help took {elapsed:.2f} CPU s"


def test_rldg_and_drift_are_subcommands():
    out = _run(["rldg"])  # no stage named: the usage, exit 2
    assert out.returncode == 2 and "vlarl rldg speed" in out.stdout
    out = _run(["drift", "--help"])
    assert out.returncode == 0 and out.stdout.startswith("usage: vlarl drift")


def test_flags_that_duplicated_a_field_name_the_field():
    out = _run(["eval", "runs/x", "--out", "runs/report"])
    assert out.returncode == 2 and "--out is spelled --eval.out" in out.stderr
    out = _run(["distill", "--teacher=runs/rl/policy"])
    assert out.returncode == 2 and "--teacher is spelled --distill.teacher" in out.stderr


def test_subcommand_help_lists_fields_with_docs():
    out = _run(["train", "--help"])
    assert out.returncode == 0
    assert "--algo.epsilon" in out.stdout and "Lower clip range" in out.stdout
    assert "--train.num_updates" in out.stdout
    out = _run(["eval", "--help"])  # the description is printed as written: "95% CIs", not "95%% CIs"
    assert out.returncode == 0 and "with 95% CIs" in out.stdout and "%%" not in out.stdout


def test_bad_key_fails_fast_naming_it():
    out, cpu = run_cpu_timed(VLARL + ["train", "--train.learing_rate", "1e-3"], timeout=120)
    assert out.returncode == 2
    assert "learing_rate" in out.stderr and "learning_rate" in out.stderr
    assert cpu < 5.0


def test_doctor_names_llvmpipe_and_fails_without_vulkan():
    ok = _run(["doctor"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "render device" in ok.stdout
    assert "llvmpipe" in ok.stdout or "[GPU]" in ok.stdout
    broken = _run(["doctor"], env={"VK_ICD_FILENAMES": "/nonexistent/icd.json"})
    assert broken.returncode == 1
    assert "no Vulkan render device" in broken.stdout and "scripts/setup.sh" in broken.stdout
