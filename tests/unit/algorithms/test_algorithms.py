"""PPO / GRPO / RLOO updates on the fake point env and the Gaussian MLP policy."""

from __future__ import annotations

import pytest
import torch
from helpers import GaussianPolicy, PointEnv

from vlarl.algorithms import ALGORITHMS, NonFiniteError, UpdateContext
from vlarl.algorithms.grpo import GRPO, RLOO
from vlarl.algorithms.ppo import PPO
from vlarl.config import AlgoConfig
from vlarl.rollout import RolloutBuffer, collect


def _ppo_rollout(policy, num_envs=4, steps=8, seed=0):
    env = PointEnv(num_envs, max_episode_steps=5, goal=0.5)
    buf = RolloutBuffer(steps, num_envs, policy.chunk_size)
    collect(env, policy, buf, base_seed=seed, update=0, generator=torch.Generator().manual_seed(seed))
    return buf


def _snapshot(params):
    return [p.detach().clone() for p in params]


def test_token_level_ratios_are_refused_for_a_policy_that_scores_whole_chunks():
    from vlarl.algorithms import check_config
    from vlarl.config import ConfigError, load_config

    token = ["--algo.importance_sampling_level", "token"]
    check_config(load_config(None, token))  # the token VLA scores each action token
    for name in ("flow_vla", "mlp_student"):
        with pytest.raises(ConfigError, match=rf"importance_sampling_level='token' needs .*"
                                              rf"policy.name='{name}'"):
            check_config(load_config(None, [*token, "--policy.name", name]))
    with pytest.raises(ConfigError, match="algo.importance_sampling_level"):
        load_config(None, ["--algo.importance_sampling_level", "sequence"])


def test_registry_names_and_classes():
    assert ALGORITHMS.names() == ["grpo", "ppo", "rloo", "rpd"]
    assert ALGORITHMS.get("ppo") is PPO and ALGORITHMS.get("rloo") is RLOO
    with pytest.raises(KeyError, match="known: \\['grpo', 'ppo', 'rloo', 'rpd'\\]"):
        ALGORITHMS.get("trpo")


@pytest.mark.parametrize("overrides, needle", [
    (["--algo.name", "sac"], r"algo.name='sac' is not allowed; choose one of \['grpo', 'ppo'"),
    (["--algo.name", "grpo", "--algo.num_generations", "1", "--env.num_envs", "2"],
     "algo.num_generations=1 must be >= 2 for grpo"),
    (["--algo.name", "rloo", "--env.num_envs", "6", "--algo.num_generations", "4"],
     r"env.num_envs=6 must be divisible by algo.num_generations=4"),
    (["--env.num_envs", "3", "--train.rollout_steps", "3", "--algo.num_mini_batches", "2"],
     r"env.num_envs\*train.rollout_steps=9 must be divisible by algo.num_mini_batches=2"),
    (["--algo.name", "rpd", "--env.num_envs", "2", "--train.rollout_steps", "4",
      "--algo.num_mini_batches", "2", "--algo.gradient_accumulation_steps", "3"],
     "minibatch size 4 must be divisible by algo.gradient_accumulation_steps=3"),
    (["--algo.name", "grpo", "--env.num_envs", "8", "--algo.shaping_coef", "0.5"],
     r"algo.shaping_coef=0.5 shapes with the env's dense rewards, but env.reward_mode='sparse'"),
])
def test_each_algorithm_refuses_the_configs_it_cannot_run(overrides, needle):
    """The checks live with the algorithm (``check_config``); ``load_config`` stays torch-free
    and accepts these, each legal on its own."""
    from vlarl.algorithms import check_config
    from vlarl.config import ConfigError, load_config

    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=needle):
        check_config(cfg)
    check_config(load_config(None, ["--algo.name", "grpo", "--env.num_envs", "8",
                                    "--algo.num_generations", "4"]))
    assert ALGORITHMS.get("rpd").needs_teacher and not ALGORITHMS.get("ppo").needs_teacher


def test_ppo_update_changes_params_and_fits_the_critic():
    policy = GaussianPolicy()
    buf = _ppo_rollout(policy)
    cfg = AlgoConfig(name="ppo", num_ppo_epochs=2, num_mini_batches=2, beta=0.1)
    algo = ALGORITHMS.get(cfg.name)(cfg)
    pm = algo.process(buf, policy)
    assert set(pm) >= {"advantage_mean", "return_mean", "explained_variance"}
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    before = _snapshot(policy.policy_parameters())
    g = torch.Generator().manual_seed(0)
    first = algo.update(policy, opt, buf, UpdateContext(), 0, g)
    assert first["optimizer_steps"] == 4 and first["skipped_steps"] == 0 and first["epochs"] == 2
    assert "nonfinite" not in first and first["kl_ref"] >= 0
    assert all(isinstance(v, float) for v in first.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.policy_parameters()))
    for _ in range(5):
        last = algo.update(policy, opt, buf, UpdateContext(), 0, g)
    assert last["value_loss"] < first["value_loss"]
    assert last["kl_ref"] > 0  # the actor has moved away from the reference


def test_critic_warmup_leaves_actor_bit_identical():
    policy = GaussianPolicy()
    buf = _ppo_rollout(policy)
    algo = PPO(AlgoConfig(critic_warmup_updates=1, beta=0.1))
    algo.process(buf, policy)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
    actor, critic = _snapshot(policy.policy_parameters()), _snapshot(policy.value_parameters())
    m = algo.update(policy, opt, buf, UpdateContext(), 0, torch.Generator().manual_seed(0))
    assert m["optimizer_steps"] == 4 and "kl_ref" not in m
    assert all(torch.equal(a, b) for a, b in zip(actor, policy.policy_parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(critic, policy.value_parameters()))
    algo.update(policy, opt, buf, UpdateContext(), 1, torch.Generator().manual_seed(0))
    assert any(not torch.equal(a, b) for a, b in zip(actor, policy.policy_parameters()))


def test_gradient_accumulation_matches_one_big_batch():
    results = []
    for gas in (1, 2):
        policy = GaussianPolicy()
        buf = _ppo_rollout(policy)
        algo = PPO(AlgoConfig(num_ppo_epochs=1, num_mini_batches=2, gradient_accumulation_steps=gas,
                              max_grad_norm=1e6))
        algo.process(buf, policy)
        opt = torch.optim.SGD(policy.parameters(), lr=0.1)
        algo.update(policy, opt, buf, UpdateContext(), 0, torch.Generator().manual_seed(1))
        results.append(torch.nn.utils.parameters_to_vector(policy.parameters()).detach())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_target_kl_stops_epochs_early():
    policy = GaussianPolicy()
    buf = _ppo_rollout(policy)
    algo = PPO(AlgoConfig(num_ppo_epochs=4, num_mini_batches=2, target_kl=1e-12))
    algo.process(buf, policy)
    m = algo.update(policy, torch.optim.Adam(policy.parameters(), lr=1e-2), buf, UpdateContext(), 0)
    assert m["epochs"] == 1 and m["optimizer_steps"] == 2


def test_nan_loss_skips_step_and_raises_after_strikes():
    policy = GaussianPolicy()
    buf = _ppo_rollout(policy)
    algo = PPO(AlgoConfig(num_ppo_epochs=1, num_mini_batches=2, max_nan_strikes=3))
    algo.process(buf, policy)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    before = _snapshot(policy.parameters())
    policy.poison = True
    m = algo.update(policy, opt, buf, UpdateContext(), 0)
    assert m["nonfinite"] == "policy_loss" and m["skipped_steps"] == 2 and m["optimizer_steps"] == 0
    assert m["nan_strikes"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert all(p.grad is None for p in policy.parameters())
    with pytest.raises(NonFiniteError, match="max_nan_strikes=3"):
        algo.update(policy, opt, buf, UpdateContext(), 1)
    assert algo.state_dict() == {"nan_strikes": 3}


def test_nonfinite_grad_norm_is_named():
    policy = GaussianPolicy()
    buf = _ppo_rollout(policy)
    algo = PPO(AlgoConfig(num_ppo_epochs=1, num_mini_batches=1, max_nan_strikes=5))
    algo.process(buf, policy)
    policy.log_std.register_hook(lambda g: g + float("inf"))
    ranks_asked = []

    def any_rank(flag: bool) -> bool:
        ranks_asked.append(flag)
        return flag

    m = algo.update(policy, torch.optim.Adam(policy.parameters()), buf,
                    UpdateContext(all_ranks_any=any_rank), 0)
    assert m["nonfinite"] == "grad_norm" and m["skipped_steps"] == 1
    assert ranks_asked[-1] is True  # the skip decision went through the collective


def _grpo_setup(cls=GRPO, dynamic_sampling=True, beta=0.0):
    policy = GaussianPolicy(bias=0.5, seed=0)
    with torch.no_grad():
        policy.log_std.fill_(0.5)  # noisy actions: some rollouts of a group reach the goal
    env = PointEnv(8, max_episode_steps=4, goal=0.5)
    buf = RolloutBuffer(2, 8, 2)
    collect(env, policy, buf, base_seed=0, update=0, mode="episodic", group_size=4,
            generator=torch.Generator().manual_seed(0))
    cfg = AlgoConfig(name=cls.mode, num_generations=4, epsilon_high=0.28, num_ppo_epochs=2,
                     num_mini_batches=1, dynamic_sampling=dynamic_sampling, beta=beta)
    return policy, buf, cls(cfg)


def test_grpo_process_broadcasts_group_advantages():
    policy, buf, algo = _grpo_setup()
    m = algo.process(buf, policy)
    outcome = (buf.success_once & buf.valid).any(0).float()
    grouped = outcome.view(2, 4)
    assert grouped.sum(1).tolist() == [1.0, 4.0]  # group 2 all succeed: dropped
    assert m["groups_kept"] == 0.5 and m["outcome_mean"] == 0.625
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    assert sorted(expected[:4].tolist()) == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-3)
    torch.testing.assert_close(buf.advantages, expected.unsqueeze(0) * buf.valid)
    assert torch.equal(buf.train_mask[:, 4:], torch.zeros_like(buf.train_mask[:, 4:]))
    assert torch.equal(buf.train_mask[:, :4], buf.valid[:, :4])


def test_shaping_by_return_and_by_max():
    """Two envs, 3 decisions of 2 steps: env 0 succeeds at decision 1 (its episode ends, the
    rest is padding), env 1 fails slowly. Summed, the slow failure outranks the success; by
    the per-step maximum it cannot, and padding after the end is ignored."""
    from vlarl.algorithms.grpo import episode_outcomes

    buf = RolloutBuffer(3, 2, 2)
    buf.step_rewards = torch.tensor([[[0.2, 0.5], [0.3, 0.3]],
                                     [[1.0, 0.0], [0.4, 0.6]],
                                     [[0.9, 0.9], [0.5, 0.5]]])
    buf.rewards = buf.step_rewards.sum(dim=2)
    buf.valid = torch.tensor([[True, True], [True, True], [False, True]])
    buf.success_once = torch.tensor([[False, False], [True, False], [False, False]])
    assert episode_outcomes(buf).tolist() == [1.0, 0.0]
    assert episode_outcomes(buf, 1.0).tolist() == pytest.approx([2.7, 2.6])
    assert episode_outcomes(buf, 0.5, "return").tolist() == pytest.approx([1.85, 1.3])
    assert episode_outcomes(buf, 1.0, "max").tolist() == pytest.approx([2.0, 0.6])
    with pytest.raises(ValueError, match="expected 'return' or 'max'"):
        episode_outcomes(buf, 1.0, "mean")


def test_grpo_update_raises_the_surrogate_of_good_actions():
    policy, buf, algo = _grpo_setup(beta=0.05)
    algo.process(buf, policy)
    mask = buf.train_mask

    def weighted_log_prob() -> float:
        with torch.no_grad():
            lp, _, _ = policy.evaluate(buf.flat_obs(mask.flatten().nonzero().flatten()),
                                       {"actions": buf.stored["actions"][mask]})
        return float((lp * buf.advantages[mask]).sum())

    before = weighted_log_prob()
    value_head = _snapshot(policy.value_parameters())
    m = algo.update(policy, torch.optim.Adam(policy.parameters(), lr=1e-2), buf, UpdateContext(), 0)
    assert m["optimizer_steps"] == 2 and m["train_samples"] == float(mask.sum())
    assert weighted_log_prob() > before
    assert "value_loss" not in m and m["kl_ref"] >= 0
    assert all(torch.equal(a, b) for a, b in zip(value_head, policy.value_parameters()))


def test_rloo_and_skipped_update_when_no_group_is_informative():
    policy, buf, algo = _grpo_setup(RLOO)
    algo.process(buf, policy)
    outcome = (buf.success_once & buf.valid).any(0).float()[:4]
    assert buf.advantages[0, :4].tolist() == pytest.approx(((outcome - outcome.mean()) * 4 / 3).tolist())
    buf.train_mask.zero_()
    m = algo.update(policy, torch.optim.Adam(policy.parameters()), buf, UpdateContext(), 0)
    assert m == {"skipped_update": 1.0, "train_samples": 0.0}


def test_kl_coefficient_schedule_and_separate_clipping():
    """beta falls linearly over beta_decay_updates (logged), the KL term vanishes at the end;
    actor and critic gradient norms are clipped and logged apart."""
    policy = GaussianPolicy()
    buf = _ppo_rollout(policy)
    algo = PPO(AlgoConfig(num_ppo_epochs=1, num_mini_batches=1, beta=0.4, beta_decay_updates=4))
    algo.process(buf, policy)
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    logged = [algo.update(policy, opt, buf, UpdateContext(), u).get("beta") for u in range(5)]
    assert logged[:4] == pytest.approx([0.4, 0.3, 0.2, 0.1]) and logged[4] is None
    m = algo.update(policy, opt, buf, UpdateContext(), 0)
    actor = torch.cat([p.grad.flatten() for p in policy.policy_parameters()]).norm()
    critic = torch.cat([p.grad.flatten() for p in policy.value_parameters()]).norm()
    # the logged norms are the pre-clip norms; after the step each group is clipped to 1.0
    assert m["grad_norm"] > 0 and m["value_grad_norm"] > 0
    assert float(actor) == pytest.approx(min(m["grad_norm"], 1.0), rel=1e-5)
    assert float(critic) == pytest.approx(min(m["value_grad_norm"], 1.0), rel=1e-5)
