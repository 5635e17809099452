"""Defects of the GPU path that a CPU can show (docs/gpu.md lists what has and has not run on
a GPU): bf16 act/evaluate on one precision path, checkpointing that changes nothing but
memory, per-rank GPU backends, copied rows of grouped resets, the colour task's RNG rows,
unsupported launchers and precisions refused at start-up, the doctor's renderer check."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlarl.config import ConfigError, load_config
from vlarl.policies import TokenVLAConfig, build_policy
from vlarl.types import Obs


def _obs(n: int, seed: int = 0) -> Obs:
    g = torch.Generator().manual_seed(seed)
    words = ["push the cube", "push the red cube to the goal region please", "pick it up"]
    return Obs(images=torch.randint(0, 256, (n, 1, 64, 64, 3), dtype=torch.uint8, generator=g),
               state=torch.randn(n, 9, generator=g), instructions=[words[i % 3] for i in range(n)])


def test_bf16_act_and_evaluate_share_one_precision_path():
    """The trainer runs rollout (act) and update (evaluate) under accelerate's autocast, which
    with ``mixed_precision: bf16`` on a CPU is ``torch.autocast("cpu", torch.bfloat16)`` (the
    test enters it directly: another test may already own this process's AcceleratorState).
    act and evaluate log-probs agree across prompt lengths and sub-batches, differ from fp32
    (bf16 is really applied, also in one process), and the value head stays fp32."""
    import inspect

    from vlarl import trainer

    src = inspect.getsource(trainer.collect_and_update)
    assert "with acc.autocast():" in src and src.index("acc.autocast()") < src.index("collect(")
    policy = build_policy(TokenVLAConfig(chunk_size=2, action_dim=7, value_head=True)).eval()
    obs = _obs(6)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        fp32 = policy.act(obs, generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = policy.act(obs, generator=g)
            lp_all, _, v_all = policy.evaluate(obs, out.stored)
            parts = [policy.evaluate(obs.index(torch.arange(i, i + 2)),
                                     {k: v[i:i + 2] for k, v in out.stored.items()})[0]
                     for i in range(0, 6, 2)]
    assert torch.allclose(out.log_probs, lp_all, atol=2e-2), (out.log_probs, lp_all)
    assert torch.allclose(torch.cat(parts), lp_all, atol=2e-2)
    assert not torch.equal(fp32.log_probs, out.log_probs)  # bf16 changed the numbers
    assert v_all.dtype == torch.float32 and out.values.dtype == torch.float32


def test_gradient_checkpointing_changes_memory_not_numbers():
    cfg = {"chunk_size": 2, "action_dim": 7, "value_head": False}
    torch.manual_seed(0)
    plain = build_policy(TokenVLAConfig(**cfg))
    torch.manual_seed(0)
    ckpt = build_policy(TokenVLAConfig(**cfg, gradient_checkpointing=True))
    assert ckpt._base().is_gradient_checkpointing and not plain._base().is_gradient_checkpointing
    obs = _obs(3)
    stored = plain.act(obs, generator=torch.Generator().manual_seed(1)).stored
    grads = []
    for p in (plain, ckpt):
        p.train()
        lp = p.evaluate(obs, stored)[0]
        lp.sum().backward()
        grads.append({n: q.grad.clone() for n, q in p.named_parameters() if q.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


def test_each_rank_simulates_and_renders_on_its_own_gpu():
    from vlarl.envs import gpu_backends

    assert gpu_backends(0) == ("physx_cuda:0", "sapien_cuda:0")
    assert gpu_backends(3) == ("physx_cuda:3", "sapien_cuda:3")


def test_grouped_reset_copies_only_the_reset_rows():
    from vlarl.envs.maniskill import copy_rows

    # envs 1, 2, 5 reset (0, 3, 4 keep running): 2 copies 1's state (same seed), 5 is alone
    assert copy_rows([7, 7, 9], [1, 2, 5]) == ([2], [1])
    # two groups of 4 in a full reset
    assert copy_rows([3] * 4 + [8] * 4, list(range(8))) == ([1, 2, 3, 5, 6, 7], [0, 0, 0, 4, 4, 4])
    assert copy_rows([1, 2], [0, 1]) == ([], [])


def test_colour_task_seeded_partial_reset_reads_its_own_seed_rows():
    from vlarl.envs.color_tasks import rng_rows

    # one env (3 of 8) reset with seed s: ManiSkill put s in row 0 and padded the rest
    assert rng_rows(True, np.array([3]), 8).tolist() == [0]
    assert rng_rows(True, np.array([2, 6]), 8).tolist() == [0, 1]
    assert rng_rows(True, np.arange(8), 8).tolist() == list(range(8))
    assert rng_rows(False, np.array([3]), 8).tolist() == [3]  # unseeded: updated in place


def test_seeded_sampling_draws_on_the_generators_device():
    from vlarl.policies.sampling import multinomial, randn

    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    a = multinomial(probs, torch.Generator().manual_seed(5))
    b = multinomial(probs, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (2, 1)
    x = randn((2, 3), torch.Generator().manual_seed(1), "cpu")
    assert torch.equal(x, torch.randn((2, 3), generator=torch.Generator().manual_seed(1)))


def test_fp16_is_refused_with_the_alternative():
    with pytest.raises(ConfigError, match="fp16.*bf16"):
        load_config(None, ["--train.mixed_precision", "fp16"]).validate()


@pytest.mark.parametrize("var", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_and_deepspeed_launches_are_refused_at_start_up(monkeypatch, tmp_path, var, no_env):
    from vlarl.runtime.preflight import preflight

    monkeypatch.setenv(var, "true")
    cfg = load_config(None, ["--train.output_dir", str(tmp_path / "run")])
    with pytest.raises(ConfigError, match="DDP"):
        preflight(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run dir is made


def test_doctor_calls_a_cpu_renderer_on_a_gpu_machine_a_problem():
    from vlarl.tools.doctor import render_problems

    assert render_problems("llvmpipe (LLVM 19.1.7, 256 bits)", has_nvidia_gpu=False) == []
    bad = render_problems("llvmpipe (LLVM 19.1.7, 256 bits)", has_nvidia_gpu=True)
    assert len(bad) == 1 and "libvulkan1" in bad[0] and "NVIDIA_DRIVER_CAPABILITIES" in bad[0]
    assert render_problems("NVIDIA H100 80GB HBM3", has_nvidia_gpu=True) == []
    assert "no Vulkan render device" in render_problems(None, has_nvidia_gpu=False)[0]


def test_a_model_whose_forward_takes_no_position_ids_is_refused_at_load():
    """OpenVLA's remote forward signature (no position_ids / logits_to_keep / **kwargs) on a
    model without Prismatic's parts; OpenVLA itself: tests/unit/policies/test_token_vla_prismatic.py."""
    from vlarl.policies.token_vla.inputs import check_forward_signature
    from vlarl.policies.token_vla.prismatic import is_prismatic

    class PrismaticLike(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, pixel_values=None, labels=None,
                    inputs_embeds=None, past_key_values=None, use_cache=None,
                    output_attentions=None, output_hidden_states=None, output_projector_features=None,
                    return_dict=None):
            raise AssertionError("never called")

    assert not is_prismatic(PrismaticLike())
    with pytest.raises(NotImplementedError, match=r"position_ids.*logits_to_keep.*batched forward"):
        check_forward_signature(PrismaticLike())
    check_forward_signature(build_policy(TokenVLAConfig(chunk_size=1, action_dim=7))._base())


def test_gpu_check_exits_at_once_without_cuda(tmp_path):
    root = Path(__file__).resolve().parents[2]
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh"), str(tmp_path / "out")],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no CUDA device" in res.stderr and "docs/gpu.md" in res.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "out").exists()


def test_wheelhouse_prunes_unused_assets_and_their_record_lines(tmp_path):
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location(
        "gpu_wheelhouse", Path(__file__).resolve().parents[2] / "scripts" / "gpu_wheelhouse.py")
    wh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wh)
    files = ["mani_skill/__init__.py", "mani_skill/assets/robots/panda/panda.urdf",
             "mani_skill/assets/robots/fetch/fetch.urdf", "mani_skill/assets/environment_maps/a.ktx",
             "mani_skill/utils/scene_builder/replicacad/builder.py",
             "mani_skill/utils/scene_builder/replicacad/meta/scene.json",
             "mani_skill/utils/scene_builder/table/table.glb"]
    wheel = tmp_path / "mani_skill-3.0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for f in files:
            z.writestr(f, "x" * 1000)
        z.writestr("mani_skill-3.0.1.dist-info/RECORD", "".join(f"{f},sha256=x,1000\n" for f in files))
    before, after = wh.prune_mani_skill(wheel, {"panda"}, keep_env_maps=False)
    kept = ["mani_skill/__init__.py", "mani_skill/assets/robots/panda/panda.urdf",
            "mani_skill/utils/scene_builder/replicacad/builder.py",
            "mani_skill/utils/scene_builder/table/table.glb"]
    with zipfile.ZipFile(wheel) as z:
        assert sorted(n for n in z.namelist() if not n.endswith("RECORD")) == sorted(kept)
        record = [x.split(",")[0] for x in z.read("mani_skill-3.0.1.dist-info/RECORD").decode().split()]
    assert sorted(record) == sorted(kept) and after < before
