"""Every recipe in recipes/ loads, validates and passes its algorithm's checks, and shows its
batch arithmetic consistently."""

from pathlib import Path

import pytest
import yaml

from vlarl.config import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*/*.yaml"))


@pytest.mark.parametrize("path", [p for p in RECIPES if p.parent.name != "accelerate"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads(path):
    if path.name == "quickstart_smoke.yaml":  # an overlay, applied on top of quickstart.yaml
        from vlarl.methods.quickstart import _recipe

        cfg = _recipe(smoke=True, extra=[])
        assert cfg.train.num_updates == 2
        return
    from vlarl.algorithms import ALGORITHMS, check_config

    cfg = load_config(path)
    assert cfg.env.num_envs >= 1
    check_config(cfg)  # the recipe's algorithm accepts it (group size, minibatch split)
    if ALGORITHMS.get(cfg.algo.name).rollout_mode == "episodic":
        assert cfg.env.num_envs % cfg.algo.num_generations == 0


@pytest.mark.parametrize("path", [p for p in RECIPES if p.parent.name == "accelerate"],
                         ids=lambda p: p.name)
def test_accelerate_configs_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in {"MULTI_GPU", "MULTI_CPU"}  # FSDP / DeepSpeed: refused
    cfg = load_config_from_file(str(path))
    assert cfg.num_processes == data["num_processes"]


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"quickstart.yaml", "ppo_token.yaml", "grpo_flow.yaml", "openvla7b_ppo.yaml",
            "pi0_grpo.yaml", "smolvlm_token_ppo.yaml", "multi_gpu_ddp.yaml"} <= names
    assert not {"fsdp.yaml", "deepspeed_zero2.yaml"} & names
