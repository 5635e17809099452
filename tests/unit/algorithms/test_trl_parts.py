"""What vlarl takes from TRL: the token VLA's log-probs and entropies through
``trl.trainer.utils.selective_log_softmax_and_entropy``, and GRPO's ``loss_type`` /
``scale_rewards`` with TRL's names and meanings (hand-computed examples)."""

from __future__ import annotations

import pytest
import torch

from vlarl.algorithms.advantages import group_advantages, loss_weights
from vlarl.algorithms.losses import policy_loss
from vlarl.policies import TokenVLAConfig, build_policy
from vlarl.types import Obs


def test_token_vla_evaluate_equals_the_plain_log_softmax_computation():
    policy = build_policy(TokenVLAConfig(chunk_size=2, action_dim=7, temperature=0.7)).eval()
    g = torch.Generator().manual_seed(0)
    obs = Obs(torch.randint(0, 256, (4, 1, 64, 64, 3), dtype=torch.uint8, generator=g),
              torch.randn(4, 9, generator=g), ["push the cube", "pick", "push it", "lift it up"])
    stored = policy.act(obs, generator=torch.Generator().manual_seed(1)).stored
    with torch.no_grad():
        lp, ent, _ = policy.evaluate(obs, stored)
        out, _, _ = policy._teacher_forced(obs, stored["tokens"])
        logp = torch.log_softmax(policy._masked_logits(out.logits), dim=-1)
        ref_lp = logp.gather(-1, stored["tokens"][..., None]).squeeze(-1).double().sum(-1).float()
        ref_ent = -(logp.exp() * logp).sum(-1).double().sum(-1).float()
    # equal to float32 rounding: one ulp of a sum near -70 is 7.6e-6
    assert torch.allclose(lp, ref_lp, atol=2e-5, rtol=0), (lp, ref_lp)
    assert torch.allclose(ent, ref_ent, atol=1e-5, rtol=0), (ent, ref_ent)
    assert float(ent.min()) > 0


def test_loss_type_weights_by_hand():
    # 3 rows (rollout_steps T = 3), 3 episodes of 1, 2 and 3 decisions; a 4th column dropped
    mask = torch.tensor([[1, 1, 1, 0],
                         [0, 1, 1, 0],
                         [0, 0, 1, 0]], dtype=torch.bool)
    ell = torch.tensor([[1.0, 2.0, 3.0, 9.0],
                        [0.0, 4.0, 5.0, 9.0],
                        [0.0, 0.0, 6.0, 9.0]])
    n = mask.sum()  # 6 decisions, E = 3 episodes

    def objective(kind):  # the mean over training decisions of w * loss
        w = loss_weights(mask, kind)
        return float((w * ell)[mask].sum() / n)

    assert objective("dapo") == pytest.approx((1 + 2 + 3 + 4 + 5 + 6) / 6)
    # grpo: mean over episodes of each episode's mean: (1 + 3 + 5) / 3
    assert objective("grpo") == pytest.approx((1.0 + (2 + 4) / 2 + (3 + 5 + 6) / 3) / 3)
    # dr_grpo: sum over decisions / (E * T) = 21 / 9
    assert objective("dr_grpo") == pytest.approx(21 / 9)
    assert float(loss_weights(mask, "grpo")[mask].mean()) == pytest.approx(1.0)
    assert float(loss_weights(mask, "grpo")[~mask].abs().sum()) == 0.0


def test_scale_rewards_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])  # two groups of 4
    g1 = torch.tensor([0.75, -0.25, -0.25, -0.25])
    none = group_advantages(r, 4, "grpo", scale="none")
    assert torch.allclose(none[:4], g1) and torch.allclose(none[4:], torch.full((4,), 0.25) * torch.tensor([1, 1, -3, 1]))
    group = group_advantages(r, 4, "grpo", scale="group", eps=0.0)
    assert torch.allclose(group[:4], g1 / 0.5)  # unbiased std of (1,0,0,0) = 0.5
    batch = group_advantages(r, 4, "grpo", scale="batch", eps=0.0)
    assert torch.allclose(batch, none / r.std())
    with pytest.raises(ValueError, match="scale="):
        group_advantages(r, 4, "grpo", scale="token")


def test_policy_loss_applies_weights_inside_the_mean():
    lp = torch.zeros(3)
    adv = torch.tensor([1.0, -2.0, 3.0])
    w = torch.tensor([2.0, 1.0, 0.0])
    loss, _ = policy_loss(lp, lp, adv, 0.2, weights=w)
    assert float(loss) == pytest.approx((-1.0 * 2 + 2.0 * 1 + 0) / 3)
