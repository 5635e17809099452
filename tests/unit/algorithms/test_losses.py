"""Clipped surrogate, value clipping and the KL estimator against hand-computed answers."""

import math

import pytest
import torch

from vlarl.algorithms.losses import (
    entropy_bonus,
    kl_to_reference,
    masked_mean,
    policy_loss,
    value_loss,
)


def _grad(lp_values, old, adv, **kw):
    lp = torch.tensor(lp_values, requires_grad=True)
    loss, metrics = policy_loss(lp, torch.tensor(old), torch.tensor(adv), **kw)
    loss.backward()
    return loss, lp.grad, metrics


def test_ratio_one_is_minus_mean_advantage():
    adv = [1.0, -2.0, 0.5, 3.0]
    loss, grad, m = _grad([0.1, -0.3, 2.0, 0.0], [0.1, -0.3, 2.0, 0.0], adv, epsilon=0.2)
    assert loss.item() == pytest.approx(-sum(adv) / 4)
    assert grad.tolist() == pytest.approx([-a / 4 for a in adv])  # d ratio / d logp = 1
    assert float(m["clipfrac"]) == 0 and float(m["ratio_mean"]) == pytest.approx(1.0)
    assert float(m["approx_kl"]) == pytest.approx(0.0)


def test_beyond_the_clip_gradient_is_zero():
    # A>0, ratio 1.5 > 1.2 and A<0, ratio 0.5 < 0.8: both clipped, no gradient.
    loss, grad, m = _grad([math.log(1.5), math.log(0.5)], [0.0, 0.0], [1.0, -1.0], epsilon=0.2)
    assert grad.tolist() == [0.0, 0.0]
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert float(m["clipfrac"]) == 1.0
    # A<0 with ratio 1.5: the pessimistic (unclipped) term wins, the gradient stays.
    _, grad, m = _grad([math.log(1.5)], [0.0], [-1.0], epsilon=0.2)
    assert grad.tolist() == pytest.approx([1.5])
    assert float(m["clipfrac"]) == 0.0


def test_asymmetric_clip_higher():
    lp = [math.log(1.25)]
    _, grad_sym, _ = _grad(lp, [0.0], [1.0], epsilon=0.2)
    _, grad_high, _ = _grad(lp, [0.0], [1.0], epsilon=0.2, epsilon_high=0.28)
    assert grad_sym.tolist() == [0.0]
    assert grad_high.tolist() == pytest.approx([-1.25])
    # the lower bound still uses epsilon: A<0, ratio 0.75 < 0.8 is clipped
    _, grad_low, _ = _grad([math.log(0.75)], [0.0], [-1.0], epsilon=0.2, epsilon_high=0.28)
    assert grad_low.tolist() == [0.0]


def test_token_level_ratio_clips_each_token_and_averages_over_the_chunk():
    """algo.importance_sampling_level=token: 2 chunks of 3 tokens. Chunk 0 (A=+1) has one token
    at ratio 1.5 (clipped: no gradient) and two at 1; summed, its chunk ratio would be 1.5 and
    clip every token's gradient away. Chunk 1 (A=-1) is at ratio 1 everywhere."""
    lp = torch.tensor([[math.log(1.5), 0.0, 0.0], [-1.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -2.0, -0.5]])
    loss, m = policy_loss(lp, old, torch.tensor([1.0, -1.0]), epsilon=0.2)
    loss.backward()
    # chunk 0: -(1.2 + 1 + 1) / 3; chunk 1: +1; mean over the 2 chunks
    assert loss.item() == pytest.approx((-(1.2 + 2.0) / 3 + 1.0) / 2)
    assert torch.allclose(lp.grad, torch.tensor([[0.0, -1 / 6, -1 / 6], [1 / 6, 1 / 6, 1 / 6]]))
    assert float(m["clipfrac"]) == pytest.approx((1 / 3 + 0) / 2)  # share of tokens clipped
    k3 = 0.5 - math.log(1.5)  # per token; the chunk's KL is its tokens' sum
    assert float(m["approx_kl"]) == pytest.approx(k3 / 2)
    assert float(m["ratio_mean"]) == pytest.approx(((1.5 + 2) / 3 + 1) / 2)
    # the same change scored per chunk: ratio 1.5 > 1.2 with A > 0 -> no gradient at all
    chunk = lp.detach().sum(-1).requires_grad_()
    policy_loss(chunk, old.sum(-1), torch.tensor([1.0, -1.0]), epsilon=0.2)[0].backward()
    assert chunk.grad[0].item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        policy_loss(lp, old.sum(-1), torch.tensor([1.0, -1.0]), epsilon=0.2)


def test_value_clipping():
    v = torch.tensor([0.5, -0.1], requires_grad=True)
    loss, m = value_loss(v, torch.zeros(2), torch.ones(2), cliprange_value=0.2)
    loss.backward()
    # entry 0: max((0.5-1)^2, (0.2-1)^2) = 0.64 (clipped, no grad); entry 1: 1.21 unclipped
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert v.grad.tolist() == pytest.approx([0.0, 0.5 * 2 * (-1.1) / 2])
    assert float(m["value_clipfrac"]) == 0.5
    # cliprange_value=None (the default): plain MSE, entry 0 keeps its gradient
    w = torch.tensor([0.5, -0.1], requires_grad=True)
    loss, m = value_loss(w, torch.zeros(2), torch.ones(2), cliprange_value=None)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.21) / 2)
    assert w.grad.tolist() == pytest.approx([0.5 * 2 * (-0.5) / 2, 0.5 * 2 * (-1.1) / 2])
    assert float(m["value_clipfrac"]) == 0.0


def test_kl_to_reference_k3():
    assert float(kl_to_reference(torch.zeros(3), torch.zeros(3))) == 0.0
    kl = kl_to_reference(torch.tensor([0.0]), torch.tensor([math.log(0.5)]))
    assert float(kl) == pytest.approx(0.5 + math.log(2) - 1)


def test_masked_mean_and_entropy():
    x = torch.tensor([1.0, 2.0, 100.0])
    mask = torch.tensor([True, True, False])
    assert float(masked_mean(x, mask)) == 1.5
    assert float(entropy_bonus(x, mask)) == 1.5
    loss, _ = policy_loss(torch.zeros(3), torch.zeros(3), x, 0.2, mask=mask)
    assert loss.item() == -1.5
