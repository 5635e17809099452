"""GAE and group advantages against hand-computed answers and a brute-force reference."""

import pytest
import torch

from vlarl.algorithms.advantages import (
    dynamic_sampling_mask,
    explained_variance,
    gae,
    group_advantages,
    normalize_advantages,
)


def _gae1(rewards, terminated, truncated, bootstrap=None, last=0.0, values=None, gamma=0.5, lam=1.0):
    """Single-env helper: lists of length T -> advantages [T]."""
    T = len(rewards)
    col = lambda xs, dt=torch.float32: torch.tensor(xs, dtype=dt).view(T, 1)
    values = values or [0.0] * T
    adv, ret = gae(col(rewards), col(values), col(terminated, torch.bool), col(truncated, torch.bool),
                   col(bootstrap or [0.0] * T), torch.tensor([last]), gamma, lam)
    return adv[:, 0].tolist(), ret[:, 0].tolist()


def test_terminated_does_not_bootstrap():
    adv, _ = _gae1([1, 1, 1], [0, 0, 1], [0, 0, 0], bootstrap=[0, 0, 99.0], last=10.0)
    assert adv == pytest.approx([1.75, 1.5, 1.0])


def test_truncated_bootstraps_from_final_observation_value():
    # A2 = 1 + 0.5 * 4 = 3; A1 = 1 + 0.5 * 3; A0 = 1 + 0.5 * 2.5 (last_values=10 is ignored)
    adv, _ = _gae1([1, 1, 1], [0, 0, 0], [0, 0, 1], bootstrap=[0, 0, 4.0], last=10.0)
    assert adv == pytest.approx([2.25, 2.5, 3.0])


def test_terminated_and_truncated_together_is_a_termination():
    adv, _ = _gae1([1, 1, 1], [0, 0, 1], [0, 0, 1], bootstrap=[0, 0, 4.0], last=10.0)
    assert adv == pytest.approx([1.75, 1.5, 1.0])


def test_partial_reset_mid_buffer_stops_propagation():
    # Episode ends at t=1; the next one runs t=2..3 and is bootstrapped by last_values=2.
    adv, ret = _gae1([1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], last=2.0)
    assert adv == pytest.approx([1.5, 1.0, 2.0, 2.0])
    assert ret == pytest.approx(adv)  # values are 0


def test_values_and_lambda_hand_computed():
    # gamma=0.5, lam=0.5, V=[1, 2], last=4: d1 = 1 + 2 - 2 = 1, d0 = 1 + 1 - 1 = 1
    # A1 = 1, A0 = 1 + 0.25 * 1 = 1.25; returns = A + V.
    adv, ret = _gae1([1, 1], [0, 0], [0, 0], last=4.0, values=[1.0, 2.0], lam=0.5)
    assert adv == pytest.approx([1.25, 1.0])
    assert ret == pytest.approx([2.25, 3.0])


def _brute_force(r, v, term, trunc, boot, last, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} until the episode ends, written out per entry."""
    T, N = r.shape
    out = torch.zeros(T, N, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            total, coef = 0.0, 1.0
            for u in range(t, T):
                if term[u, n]:
                    nxt = 0.0
                elif trunc[u, n]:
                    nxt = float(boot[u, n])
                else:
                    nxt = float(v[u + 1, n]) if u + 1 < T else float(last[n])
                total += coef * (float(r[u, n]) + gamma * nxt - float(v[u, n]))
                if term[u, n] or trunc[u, n]:
                    break
                coef *= gamma * lam
            out[t, n] = total
    return out


def test_gae_matches_brute_force_with_random_resets():
    g = torch.Generator().manual_seed(0)
    T, N = 12, 5
    r, v, boot, last = (torch.randn(T, N, generator=g), torch.randn(T, N, generator=g),
                        torch.randn(T, N, generator=g), torch.randn(N, generator=g))
    term = torch.rand(T, N, generator=g) < 0.2
    trunc = torch.rand(T, N, generator=g) < 0.2
    assert term.any() and trunc.any() and (term & trunc).any()
    adv, ret = gae(r, v, term, trunc, boot, last, 0.9, 0.8)
    ref = _brute_force(r, v, term, trunc, boot, last, 0.9, 0.8)
    torch.testing.assert_close(adv.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, adv + v)


def test_gae_valid_mask_zeroes_invalid_entries_and_checks_shapes():
    T, N = 3, 2
    valid = torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.bool)
    z = torch.zeros(T, N)
    adv, _ = gae(torch.ones(T, N), z, z.bool(), z.bool(), z, torch.zeros(N), 0.9, 0.9, valid=valid)
    assert adv[~valid].abs().sum() == 0 and (adv[valid] > 0).all()
    with pytest.raises(ValueError, match="values has shape"):
        gae(torch.ones(T, N), torch.zeros(T, 1), z.bool(), z.bool(), z, torch.zeros(N), 0.9, 0.9)


def test_group_advantages_grpo_and_rloo_values():
    out = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    grpo = group_advantages(out, 4, "grpo", eps=0.0)
    # group 1: mean 0.25, unbiased std 0.5; group 2: mean 0.5, std sqrt(1/3)
    s = 0.5 / (1 / 3) ** 0.5
    assert grpo.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, s, s, -s, -s])
    rloo = group_advantages(out, 4, "rloo")
    assert rloo.tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3, 2 / 3, 2 / 3, -2 / 3, -2 / 3])
    flat = group_advantages(torch.ones(4), 2, "grpo")
    assert flat.abs().max() == 0  # all-equal group: zero advantage, no division by zero


def test_group_advantages_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible by group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="choose one of"):
        group_advantages(torch.zeros(4), 2, "ppo")  # type: ignore[arg-type]


def test_dynamic_sampling_mask_drops_all_equal_groups():
    out = torch.tensor([1.0, 1, 1, 0, 1, 0, 0, 0, 0])
    assert dynamic_sampling_mask(out, 3).tolist() == [False] * 3 + [True] * 3 + [False] * 3


def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(3) + 2.0, y) == pytest.approx(0.0)


def test_normalize_advantages_in_one_process_and_with_a_summing_reduce():
    a = torch.tensor([1.0, 2.0, 4.0, 7.0])
    ref = (a - a.mean()) / (a.std() + 1e-8)
    torch.testing.assert_close(normalize_advantages(a), ref)
    # a reduce that sums over two identical "ranks": the union [a, a] has the same mean,
    # and its unbiased std is std(a) * sqrt(2 * (n - 1) / (2n - 1))
    twice = normalize_advantages(a, lambda t: 2 * t)
    union = torch.cat([a, a])
    torch.testing.assert_close(twice, ((a - union.mean()) / (union.std() + 1e-8)))
    assert not torch.allclose(twice, ref)
    one = torch.tensor([3.0])
    assert torch.equal(normalize_advantages(one), one)  # nothing to normalise by
