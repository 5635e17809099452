"""`vlarl doctor`: what is installed, what renders, what is missing - with a one-line fix each.

Rendering is probed in a subprocess: SAPIEN can abort the process when no Vulkan driver
exists, and the doctor must still report.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys

SETUP = "bash scripts/setup.sh"
PACKAGES = ["torch", "transformers", "peft", "trl", "accelerate", "mani_skill", "sapien",
            "gymnasium", "wandb", "datasets"]

_PROBE = r"""
import sapien
s = sapien.render.get_device_summary()
print(s)
"""


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg.replace("_", "-"))
    except md.PackageNotFoundError:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None


def render_device(timeout: float = 60.0) -> tuple[str | None, str]:
    """Name of the first Vulkan device SAPIEN supports (e.g. ``llvmpipe``), and the raw summary."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], check=False, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "SAPIEN device probe timed out"
    text = out.stdout + out.stderr
    name = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(("GPU:", "CPU:")) or "llvmpipe" in line:
            block = "\n".join(lines[i:i + 3])
            if "Supported: 1" in block:
                name = line.split(":", 1)[1].strip() if ":" in line else line.strip()
                break
    return name, text.strip()


def nvidia_gpu() -> bool:
    """Whether the machine has an NVIDIA GPU the driver sees (``nvidia-smi -L``)."""
    try:
        return subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def render_problems(device: str | None, has_nvidia_gpu: bool) -> list[str]:
    """What is wrong with SAPIEN's render device, each with its fix. On a machine with an
    NVIDIA GPU a software renderer is a problem: ManiSkill then renders every camera on the
    CPU (~100x slower) without any error."""
    if not device:
        return ["no Vulkan render device for SAPIEN: run `" + SETUP + "` (installs Mesa's "
                "software Vulkan >= 24.3: on Debian 12 from bookworm-backports; on a GPU machine "
                "libvulkan1 + libegl1 and the NVIDIA driver's Vulkan ICD)"]
    if has_nvidia_gpu and "llvmpipe" in device.lower():
        return [f"an NVIDIA GPU is present but SAPIEN renders with {device} (the CPU): install "
                "libvulkan1 and libegl1 (`" + SETUP + "` does), make sure the NVIDIA Vulkan ICD "
                "exists (/usr/share/vulkan/icd.d/nvidia_icd.json) and, in containers, set "
                "NVIDIA_DRIVER_CAPABILITIES=all"]
    return []


def multi_cpu_launch(cuda: bool) -> tuple[str, str | None]:
    """Whether ``accelerate launch --config_file recipes/accelerate/multi_cpu.yaml`` can start
    several CPU processes here (it needs mpirun; as root, Open MPI's run-as-root variables)."""
    import shutil

    if shutil.which("mpirun") is None:
        if cuda:
            return "no mpirun (not needed with GPUs; torchrun works too)", None
        return "NO (mpirun missing)", ("accelerate launch of several CPU processes needs mpirun: "
                                       f"run `{SETUP}` (installs openmpi-bin) or use torchrun")
    if os.geteuid() == 0 and os.environ.get("OMPI_ALLOW_RUN_AS_ROOT") != "1":
        return "mpirun found, but refuses root", (
            "Open MPI refuses to run as root: `source .venv/bin/activate` (setup.sh exports "
            "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 there)")
    return "yes (accelerate launch --config_file recipes/accelerate/multi_cpu.yaml)", None


def run_doctor() -> int:
    problems: list[str] = []
    rows = [("python", platform.python_version()), ("platform", platform.platform())]
    for pkg in PACKAGES:
        v = _version(pkg)
        rows.append((pkg, v or "MISSING"))
        if v is None:
            problems.append(f"{pkg} is not installed: run `{SETUP}`")
    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("cuda", f"yes ({torch.cuda.get_device_name(0)})" if cuda else "no (CPU only)"))
    except Exception as err:  # noqa: BLE001 - report, don't crash the doctor
        rows.append(("cuda", f"torch import failed: {err}"))
    device, summary = (None, "sapien missing")
    if _version("sapien"):
        device, summary = render_device()
    if device:
        kind = "software (CPU)" if "llvmpipe" in device.lower() else "GPU"
        rows.append(("render device", f"{device} [{kind}]"))
    else:
        rows.append(("render device", "NONE"))
    problems += render_problems(device, cuda or nvidia_gpu())
    mpi, mpi_note = multi_cpu_launch(cuda)
    rows.append(("multi-process CPU launch", mpi))
    notes = [mpi_note] if mpi_note else []  # optional: one process (or torchrun) works without
    rows.append(("gpu simulation (physx_cuda)", "possible" if cuda else "no (needs CUDA); using physx_cpu workers"))
    rows.append(("wandb", ("train.wandb_mode (default offline; never blocks training); "
                           f"WANDB_API_KEY {'set' if os.environ.get('WANDB_API_KEY') else 'not set'}")))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for note in notes:
        print(f"\nnote: {note}")
    if problems:
        print("\nproblems:")
        for p in problems:
            print(f"  - {p}")
        if not device:
            print("\nSAPIEN said:\n  " + summary.replace("\n", "\n  ")[:2000])
        return 1
    print("\nall good")
    return 0
