"""OpenVLA-format checkpoints through token_vla, offline.

The checkpoint is the tiny PaliGemma with OpenVLA's packaging: a custom model type whose
config and model classes live in ``.py`` files next to the weights and are named in
``config.json``'s ``auto_map`` only under ``AutoModelForVision2Seq`` (transformers 5 has no
such Auto class). Plus OpenVLA's action ids (descending, below ``tokenizer.vocab_size``)
and prompt.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import make_obs

from vlarl.policies import TokenVLAConfig, load_policy
from vlarl.policies.saving import load_base
from vlarl.policies.token_vla.action_tokenizer import OpenVLAActionTokenizer

K, A = 2, 7
OPENVLA_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"

_CONFIG_PY = '''
from transformers import PaliGemmaConfig


class TinyOpenVLAConfig(PaliGemmaConfig):
    model_type = "tiny_openvla"
'''
_MODELING_PY = '''
from transformers import PaliGemmaForConditionalGeneration

from .configuration_tinyvla import TinyOpenVLAConfig


class TinyOpenVLAForActionPrediction(PaliGemmaForConditionalGeneration):
    config_class = TinyOpenVLAConfig
'''


@pytest.fixture(scope="module")
def remote_ckpt(tmp_path_factory):
    """The tiny PaliGemma re-packaged as a remote-code checkpoint, OpenVLA style."""
    from vlarl.policies.tiny import tiny_checkpoint

    d = tmp_path_factory.mktemp("remote") / "tiny_openvla"
    shutil.copytree(tiny_checkpoint("paligemma", 256), d)
    (d / "configuration_tinyvla.py").write_text(_CONFIG_PY)
    (d / "modeling_tinyvla.py").write_text(_MODELING_PY)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="tiny_openvla", architectures=["TinyOpenVLAForActionPrediction"],
               auto_map={"AutoConfig": "configuration_tinyvla.TinyOpenVLAConfig",
                         "AutoModelForVision2Seq":
                             "modeling_tinyvla.TinyOpenVLAForActionPrediction"})
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def openvla_policy(path, **kw):
    return load_policy(path, trust_remote_code=True, chunk_size=K, action_dim=A,
                       action_token_layout="openvla", prompt_template=OPENVLA_PROMPT, **kw)


def test_openvla_action_tokenizer_hand_computed():
    """256 edges -1 + 2i/255: digitize(0) = 128 (edges 0..127 <= 0), digitize(1) = 256,
    digitize(-1) = 1, digitize(0.5) = 192 (2i/255 <= 1.5 <=> i <= 191); position = 256 - d."""
    tok = OpenVLAActionTokenizer(256)
    a = torch.tensor([0.0, 1.0, -1.0, 0.5, 7.0])
    assert tok.tokenize(a).tolist() == [128, 0, 255, 64, 0]
    # Centre of interval d-1 (d = 256 folds onto the last interval): -1 + (2c + 1)/255.
    expected = torch.tensor([0.0, 254.0 / 255, -254.0 / 255, 128.0 / 255, 254.0 / 255])
    assert torch.allclose(tok.detokenize(tok.tokenize(a)), expected, atol=1e-6)
    x = torch.linspace(-1, 1, 2001)
    assert (tok.detokenize(tok.tokenize(x)) - x).abs().max().item() <= 1 / 255 + 1e-6


def test_remote_code_checkpoint_loads_through_vision2seq_auto_map(remote_ckpt):
    import transformers

    # Without the fallback transformers 5 cannot load it: no Auto class knows the type.
    with pytest.raises((ValueError, KeyError)):
        transformers.AutoModelForImageTextToText.from_pretrained(remote_ckpt,
                                                                 trust_remote_code=True)
    model, _ = load_base(remote_ckpt, TokenVLAConfig(trust_remote_code=True))
    assert type(model).__name__ == "TinyOpenVLAForActionPrediction"
    # load_base raises on any missing / unexpected key; also every tensor equals the plain
    # PaliGemma load of the same weights.
    ref = transformers.PaliGemmaForConditionalGeneration.from_pretrained(remote_ckpt).state_dict()
    own = model.state_dict()
    assert own.keys() == ref.keys() and len(own) > 50
    assert all(torch.equal(own[k], ref[k]) for k in ref)


def test_openvla_layout_and_prompt_through_load_policy(remote_ckpt, tmp_path):
    policy = openvla_policy(remote_ckpt)
    assert type(policy._base()).__name__ == "TinyOpenVLAForActionPrediction"
    v = policy.processor.tokenizer.vocab_size  # base vocab without added tokens, like 32000
    assert policy.action_start == v - 256
    # Known actions -> OpenVLA ids V - digitize(a) (see the hand-computed test above).
    a = torch.tensor([0.0, 1.0, -1.0, 0.5])
    ids = policy.action_start + policy.action_tokenizer.tokenize(a)
    assert ids.tolist() == [v - 128, v - 256, v - 1, v - 192]
    back = policy.action_tokenizer.detokenize(ids - policy.action_start)
    assert (back - a).abs().max().item() <= 1 / 255 + 1e-6  # half a bin (bin = 2/255)

    obs = make_obs()
    assert policy.prompts(obs)[0] == ("<image>In: What action should the robot take to "
                                      "pick the red cube?\nOut: state:")  # + the projected state
    out = policy.act(obs, generator=torch.Generator().manual_seed(1))
    lp, _, val = policy.evaluate(obs, out.stored)
    assert (lp - out.log_probs).abs().max().item() < 1e-5
    assert torch.allclose(val, out.values, atol=1e-6)
    tokens = out.stored["tokens"]
    assert out.actions.view(3, -1).equal(policy.action_tokenizer.detokenize(tokens))
    assert float(out.actions.abs().max()) <= 254 / 255 + 1e-6

    # Save copies the remote .py files; the reloaded policy is the same remote class.
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "base" / "modeling_tinyvla.py").is_file()
    assert (tmp_path / "base" / "configuration_tinyvla.py").is_file()
    loaded = load_policy(tmp_path)
    assert loaded.cfg.action_token_layout == "openvla"
    assert loaded.cfg.prompt_template == OPENVLA_PROMPT
    assert type(loaded._base()).__name__ == "TinyOpenVLAForActionPrediction"
    b = loaded.act(obs, generator=torch.Generator().manual_seed(1))
    assert torch.equal(b.actions, out.actions)
    assert (b.log_probs - out.log_probs).abs().max().item() < 1e-6


def test_default_prompt_and_layout_unchanged():
    cfg = TokenVLAConfig()
    assert cfg.action_token_layout == "vlarl"
    assert cfg.prompt_template.replace("{instruction}", "x") == \
        "What action should the robot take to x?"


def test_config_rejects_bad_layout_and_template():
    from vlarl.config import Config, ConfigError, set_field

    with pytest.raises(ConfigError, match="openvla"):
        set_field(TokenVLAConfig(), "action_token_layout", "rt2", "policy.")
    cfg = Config()
    cfg.policy.prompt_template = "no placeholder"
    with pytest.raises(ConfigError, match=r"\{instruction\}"):
        cfg.validate()
