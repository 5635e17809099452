"""Build an offline wheelhouse for a GPU machine, with ManiSkill's assets pruned.

GPU machines in clusters are often offline and a stock CUDA PyTorch image already holds torch,
transformers, peft, accelerate, safetensors and tokenizers; what it lacks is the simulator
stack. The full mani_skill 3.0.1 wheel is 101 MB, mostly robot meshes (57 MB) and environment
maps (24 MB) that the configured tasks never load; this keeps the robots the tasks use.

    python scripts/gpu_wheelhouse.py OUT --python 3.12            # download + prune
    # on the GPU machine (no network):
    pip install --no-index --find-links OUT mani_skill sapien gymnasium
    pip install --no-deps -e .                                       # vlarl itself

Downloads go through pip (``pip download --only-binary :all: --python-version ... --platform
...``) from the package index this machine reaches; ``--no-deps`` with the explicit list below,
so torch and the rest of the image are never fetched. The pruned wheel keeps its name; its
RECORD lists only the files kept (pip uses RECORD for uninstalls, it does not re-hash on
install).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGES = [
    "mani_skill==3.0.1", "sapien==3.0.3", "gymnasium==1.4.0", "farama-notifications",
    "cloudpickle", "dacite", "defusedxml", "GitPython", "gitdb", "smmap", "h5py", "mplib",
    "toppra", "pytorch_kinematics", "arm_pytorch_utilities", "trimesh", "tyro", "docstring-parser",
    "shtab", "typeguard", "nvidia-ml-py", "tabulate", "transforms3d", "lxml", "networkx",
    "opencv-python", "pyperclip", "importlib_resources", "imageio", "imageio-ffmpeg",
    "rich", "pyyaml", "scipy", "tqdm", "datasets==5.2.0", "pyarrow", "dill", "multiprocess",
    "xxhash", "fsspec", "pandas", "trl==1.16.0", "wandb==0.31.0", "matplotlib",
]
"""What a stock CUDA PyTorch image lacks for vlarl (measured on one: transformers, peft, accelerate,
timm, torchvision, safetensors and tokenizers are there)."""

ROBOTS_USED = {"panda"}
"""Robot asset folders the shipped tasks load (every vlarl task uses the Panda arm)."""
SCENES_UNUSED = {"replicacad", "kitchen_counter"}
"""Scene builders whose data files (not code) the table-top tasks never load."""


def prune_mani_skill(wheel: Path, keep_robots: set[str], keep_env_maps: bool) -> tuple[int, int]:
    """Rewrite ``wheel`` without unused robot folders, the data files of unused scene
    builders, and environment maps unless kept.
    Returns (bytes before, bytes after)."""
    before = wheel.stat().st_size
    tmp = wheel.with_suffix(".tmp")

    def dropped(name: str) -> bool:
        parts = name.split("/")
        if parts[:3] == ["mani_skill", "assets", "robots"] and len(parts) > 3:
            return parts[3] not in keep_robots
        if (parts[:3] == ["mani_skill", "utils", "scene_builder"] and len(parts) > 4
                and parts[3] in SCENES_UNUSED and not name.endswith(".py")):
            return True
        return not keep_env_maps and parts[:3] == ["mani_skill", "assets", "environment_maps"]

    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if dropped(info.filename):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(x for x in lines if not dropped(x.split(",")[0])) + "\n").encode()
            dst.writestr(info, data)
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--python", default="3.12", help="target Python version (default 3.12)")
    ap.add_argument("--platform", default="manylinux_2_28_x86_64",
                    help="target platform tag (default manylinux_2_28_x86_64)")
    ap.add_argument("--keep-robot", action="append", default=[],
                    help="also keep this robot's assets (repeatable; panda is always kept)")
    ap.add_argument("--keep-env-maps", action="store_true",
                    help="keep ManiSkill's environment maps (24 MB; not used by the table scene)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--python-version", args.python, "--platform", args.platform,
           "--platform", "manylinux2014_x86_64", "--platform", "any", "-d", str(args.out),
           *PACKAGES]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    for wheel in args.out.glob("mani_skill-*.whl"):
        a, b = prune_mani_skill(wheel, ROBOTS_USED | set(args.keep_robot), args.keep_env_maps)
        print(f"pruned {wheel.name}: {a / 1e6:.0f} MB -> {b / 1e6:.0f} MB")
    total = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    print(f"wheelhouse {args.out}: {len(list(args.out.glob('*.whl')))} wheels, {total / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
