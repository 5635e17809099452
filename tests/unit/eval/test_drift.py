"""vlarl.eval.drift: KL(pi || pi_base) on dataset states, with real tiny VLAs and real demos."""

from __future__ import annotations

import json

import pytest
import torch

from vlarl.cli import main as vlarl_main
from vlarl.config import Config
from vlarl.data import collect_demos
from vlarl.eval.drift import dataset_batches, greedy_agreement, policy_kl
from vlarl.policies import TokenVLAConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vlarl.policies import build_policy

    tmp = tmp_path_factory.mktemp("drift")
    cfg = Config()
    cfg.env.task, cfg.env.image_size, cfg.env.max_episode_steps = "PushCube-v1", 32, 30
    cfg.data.num_episodes, cfg.data.num_workers = 1, 1
    cfg.data.dataset_dir = str(tmp / "demos")
    demos = collect_demos(cfg)
    pcfg = TokenVLAConfig(tiny="paligemma", chunk_size=4, temperature=0.5)
    policy = build_policy(pcfg)
    policy.save_pretrained(tmp / "a")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # b: every weight of a moved by noise - a policy that drifted
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    policy.save_pretrained(tmp / "b")
    return tmp, demos


def test_kl_is_zero_to_itself_and_positive_to_another_policy(setup):
    from vlarl.policies import load_policy

    tmp, demos = setup
    a, a2, b = load_policy(tmp / "a"), load_policy(tmp / "a"), load_policy(tmp / "b")
    batches = dataset_batches(demos, a.chunk_size, rows=12, batch_size=8)
    assert [len(x) for x in batches] == [8, 4]
    same = policy_kl(a, a2, batches)
    assert same == {"kl": 0.0, "kl_sem": 0.0, "n": 12}
    far = policy_kl(b, a, batches)
    assert far["n"] == 12 and far["kl"] > 3 * far["kl_sem"] > 0
    assert policy_kl(b, a, batches) == far  # seeded: the same draws
    assert greedy_agreement(a, a2, batches) == {"greedy_value_match": 1.0,
                                                "greedy_chunk_match": 1.0, "greedy_action_l1": 0.0}
    moved = greedy_agreement(b, a, batches)
    assert moved["greedy_value_match"] < 0.9 and moved["greedy_chunk_match"] < 0.5
    assert moved["greedy_action_l1"] > 0.05


def test_vlarl_drift_prints_one_json_line_per_dataset_and_refuses_other_temperatures(setup, capsys):
    from vlarl.policies import load_policy

    tmp, demos = setup
    assert vlarl_main(["drift", str(tmp / "b"), str(tmp / "a"), "--dataset", str(demos), "--rows", "4"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["task"] == "PushCube-v1" and row["n"] == 4 and row["kl"] > 0
    assert 0 <= row["greedy_value_match"] < 1 and row["greedy_action_l1"] > 0
    load_policy(tmp / "a", temperature=1.0).save_pretrained(tmp / "a_t1")
    with pytest.raises(SystemExit, match="policy.temperature differs: 0.5"):
        vlarl_main(["drift", str(tmp / "b"), str(tmp / "a_t1"), "--dataset", str(demos), "--rows", "4"])
