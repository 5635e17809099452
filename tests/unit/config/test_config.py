"""Config loading and validation: every bad value is named, fast, before anything starts."""

import time

import pytest

from vlarl.config import Config, ConfigError, load_config, save_config
from vlarl.policies import TokenVLAConfig


def test_defaults_validate_and_overrides_apply(tmp_path):
    cfg = load_config(None, ["--algo.epsilon", "0.1", "--env.task=PushCube-v1",
                             "--train.learning_rate", "3e-5", "--eval.splits", "train,wide_pose"])
    assert cfg.algo.epsilon == 0.1
    assert cfg.env.task == "PushCube-v1"
    assert cfg.train.learning_rate == pytest.approx(3e-5)
    assert cfg.eval.splits == ["train", "wide_pose"]
    spaced = load_config(None, ["--eval.splits", "train", "wide_pose", "distractor",
                                "--eval.num_episodes", "7"])
    assert spaced.eval.splits == ["train", "wide_pose", "distractor"]
    assert spaced.eval.num_episodes == 7
    path = tmp_path / "r.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg


@pytest.mark.parametrize("overrides, needle", [
    (["--train.learing_rate", "1e-3"], "learing_rate"),
    (["--algo.gamma", "1.5"], "algo.gamma"),
    (["--env.num_envs", "two"], "env.num_envs"),
    (["--env.image_size", "0"], "env.image_size"),
    (["--env.reward_mode", "shaped"], "env.reward_mode"),
    (["--policy.action_low", "1", "--policy.action_high", "0"], "policy.action_low"),
    (["--data.extra_tasks", "PullCube-v1", "PullCube-v1"], "data.extra_tasks"),
    (["--data.extra_tasks", "PullCube-v1", "--data.expert", "/some/policy"], "data.expert"),
    (["--policy.lora_lm_head", "true", "--policy.name", "flow_vla"], "policy.lora_lm_head"),
    (["--policy.lora_lm_head", "true", "--policy.use_lora", "false"], "policy.lora_lm_head"),
    (["--eval.temperature", "0.5"], "eval.deterministic=false"),  # greedy samples nothing
    (["--eval.temperature", "0", "--eval.deterministic", "false"], "eval.temperature"),
])
def test_bad_values_name_the_key(overrides, needle):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, overrides)
    assert time.perf_counter() - t0 < 1.0


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: {task: PickCube-v1\n")
    with pytest.raises(ConfigError, match="YAML syntax error in .*bad.yaml"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("trainer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'trainer'.*did you mean 'train'"):
        load_config(unknown)
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_field_has_a_docstring():
    import dataclasses

    from vlarl import config as C

    for cls in (C.EnvConfig, *C.POLICY_CONFIGS.values(), C.AlgoConfig, C.TrainConfig,
                C.DataConfig, C.SFTConfig, C.EvalConfig, C.DistillConfig):
        docs = C.field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert missing == [], f"{cls.__name__} fields without docstring: {missing}"
    assert isinstance(Config().validate(), Config)
    assert sorted(C.POLICY_CONFIGS) == ["flow_vla", "mlp_student", "token_vla"]


def test_policy_name_picks_the_sections_class_and_refuses_another_policys_keys(tmp_path):
    """Each policy owns its keys: ``policy.name`` picks the config class (whatever the order of
    the recipe's keys), a key only another policy reads is refused naming its owner, and a
    teacher's config converts to its student's carrying the shared fields."""
    from vlarl import config as C
    from vlarl.policies import FlowVLAConfig, MLPStudentConfig

    flow = load_config(None, ["--policy.name", "flow_vla", "--policy.num_inference_steps", "3"]).policy
    assert type(flow) is FlowVLAConfig and flow.num_inference_steps == 3 and flow.tiny == "pi0"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("policy:\n  noise_level: 0.1\n  chunk_size: 2\n  name: flow_vla\n")
    from_yaml = load_config(recipe).policy
    assert (type(from_yaml), from_yaml.noise_level, from_yaml.chunk_size) == (FlowVLAConfig, 0.1, 2)
    with pytest.raises(ConfigError, match=r"unknown key 'policy.num_inference_steps' for "
                                          r"policy.name='token_vla' \(it is a key of flow_vla\)"):
        load_config(None, ["--policy.num_inference_steps", "3"])
    with pytest.raises(ConfigError, match=r"policy.action_bins is a token_vla key; "
                                          r"policy.name='flow_vla' has no such key"):
        load_config(None, ["--policy.action_bins", "64", "--policy.name", "flow_vla"])
    with pytest.raises(ConfigError, match=r"policy.name='pi5' is not allowed; "
                                          r"choose one of \['flow_vla', 'mlp_student', 'token_vla'\]"):
        load_config(None, ["--policy.name", "pi5"])
    with pytest.raises(TypeError, match="PolicyConfig holds the fields policies share"):
        C.PolicyConfig()
    teacher = load_config(None, ["--policy.action_bins", "64", "--policy.chunk_size", "6"]).policy
    student = teacher.to("mlp_student", path=None)
    assert type(student) is MLPStudentConfig and student.chunk_size == 6
    assert not hasattr(student, "action_bins")
    flow = teacher.to("flow_vla")
    assert (flow.chunk_size, flow.tiny) == (6, "pi0")  # an architecture is not carried over
    # a run's config.yaml saved when one class held every policy's fields still loads: the
    # other policies' keys at their defaults had no effect and are skipped, others refused
    old = tmp_path / "config.yaml"
    old.write_text("policy:\n  name: token_vla\n  action_bins: 64\n  num_inference_steps: 4\n"
                   "  noise_level: 0.3\n  student_input: full\n")
    assert load_config(old).policy.action_bins == 64
    old.write_text("policy:\n  name: token_vla\n  num_inference_steps: 8\n")
    with pytest.raises(ConfigError, match="it is a key of flow_vla"):
        load_config(old)
    cfg = Config()
    cfg.policy.name = "flow_vla"  # set behind the loader's back: the class would not follow
    with pytest.raises(ConfigError, match="policy.name='flow_vla' but the policy section is a "
                                          "TokenVLAConfig"):
        cfg.validate()


def test_cache_keys_hash_only_non_default_fields():
    """A field added to vlarl (with its default) must not change the keys of cached stages."""
    from vlarl.config import non_default

    cfg = load_config(None, ["--policy.chunk_size", "6", "--policy.lora_r", "8"])
    assert non_default(cfg.policy) == {"chunk_size": 6, "lora_r": 8}
    assert non_default(TokenVLAConfig()) == {}
    # another policy's defaults never hash like the default policy's (an SFT dir reused)
    from vlarl.policies import FlowVLAConfig, MLPStudentConfig

    assert non_default(FlowVLAConfig()) == {"name": "flow_vla"}
    assert non_default(MLPStudentConfig(chunk_size=2)) == {"name": "mlp_student", "chunk_size": 2}


def test_validate_is_pure_and_resolve_fills_what_follows():
    """validate() never changes the config it checks; resolve() (which load_config calls)
    switches on the privileged state a privileged critic reads."""
    import copy

    cfg = Config()
    cfg.policy.critic_input = "privileged"
    before = copy.deepcopy(cfg)
    with pytest.raises(ConfigError, match="env.privileged_state must be true"):
        cfg.validate()
    assert cfg == before  # nothing was switched on behind the caller's back
    assert cfg.resolve().validate().env.privileged_state is True
    loaded = load_config(None, ["--policy.critic_input", "privileged"])
    assert loaded.env.privileged_state is True
    ok = load_config(None, [])
    snapshot = copy.deepcopy(ok)
    ok.validate()
    assert ok == snapshot


@pytest.mark.parametrize("key,value", [("policy.lora_r", "0"), ("policy.lora_alpha", "-8"),
                                       ("policy.lora_dropout", "1.0")])
def test_lora_values_peft_would_refuse_are_named_at_load(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"--{key}", value])
