"""Flow-matching VLA (pi0) as an RL policy: noisy Euler sampler with an exact likelihood.

``transformers.PI0ForConditionalGeneration`` is a PaliGemma VLM (the *prefix*: images +
instruction) plus a Gemma action expert (the *suffix*: state + noisy action chunk + time)
that predicts a velocity. This class keeps pi0's own pieces - ``embed_prefix``, the VLM prefix KV
cache, ``forward(state, noise, timestep, past_key_values)`` for one velocity, its
flow-matching loss for SFT - and replace only the deterministic ODE loop of
``sample_actions`` by the Flow-Noise / ReinFlow sampler of :mod:`vlarl.policies.flow_vla.flow_math`,
so each denoising step is a Gaussian transition and the chunk has a log-probability.

Data flow per decision: ``Obs`` -> ``PI0Processor`` (tokens, pixels) -> prefix pass once
(KV cache + pooled features -> value head) -> K suffix passes reusing the cache ->
``x_traj [N, K+1, chunk, A_pad]`` -> actions ``clip(x_K[:, :k, :A], -1, 1)``.
``evaluate`` replays the same K suffix passes on the stored trajectory, with grad.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from vlarl.config import ConfigError, set_field
from vlarl.policies import POLICIES, sampling
from vlarl.policies.base import Policy
from vlarl.policies.common import (
    ValueHead,
    apply_lora,
    enable_checkpointing,
    is_peft,
    make_value_head,
    masked_mean_pool,
    merge_adapters,
    privileged_input,
)
from vlarl.policies.flow_vla import flow_math
from vlarl.policies.flow_vla.configuration_flow_vla import FlowVLAConfig
from vlarl.policies.saving import (
    ADAPTER_DIR,
    BASE_DIR,
    POLICY_FILE,
    load_base,
    load_saved_heads,
    read_policy_json,
    refuse_changed,
    save_checkpoint,
)
from vlarl.policies.tiny import SEED, cached_build
from vlarl.policies.tokenizer import build_tokenizer
from vlarl.types import ActOutput, Obs

if TYPE_CHECKING:
    from transformers import PI0ForConditionalGeneration, PI0Processor

IMAGE_SIZE = 64
"""Input resolution of the tiny SigLIP (ManiSkill cameras render 64x64 by default)."""
PATCH_SIZE = 16
"""16 px patches: 16 image tokens per camera keep the tiny prefix short."""
PI0_CLASS = "PI0ForConditionalGeneration"
"""transformers class ``load_base`` loads pi0 checkpoints with."""
MAX_DIM = 32
TEXT_TOKENS = 48
"""Prompt tokens after the image tokens (``<bos>`` + instruction + newline); longer is cut."""
"""pi0's ``max_state_dim`` / ``max_action_dim`` (real checkpoints use 32 too)."""


# ----------------------------------------------------------------------------- tiny model

def tiny_pi0_config(vocab_size: int, image_token_id: int, chunk_size: int = 4,
                    num_inference_steps: int = 4, width: int = 128, layers: int = 2) -> Any:
    """A ~1.4 M-parameter ``PI0Config``: 2-layer 128-wide SigLIP, Gemma VLM and Gemma expert.

    The VLM and the action expert must share layer count, KV heads and head_dim because the
    expert attends to the VLM's per-layer KV cache.
    """
    from transformers import PI0Config

    gemma = {"model_type": "gemma", "hidden_size": width, "num_hidden_layers": layers,
             "intermediate_size": 2 * width, "num_attention_heads": 2, "num_key_value_heads": 1,
             "head_dim": width // 2}
    vision = {"model_type": "siglip_vision_model", "hidden_size": width,
              "intermediate_size": 2 * width, "num_hidden_layers": layers,
              "num_attention_heads": 2, "patch_size": PATCH_SIZE, "image_size": IMAGE_SIZE,
              "vision_use_head": False}
    return PI0Config(
        vlm_config={"model_type": "paligemma", "text_config": {**gemma, "vocab_size": vocab_size},
                    "vision_config": vision, "projection_dim": width,
                    "image_token_id": image_token_id, "vocab_size": vocab_size},
        dit_config=gemma, chunk_size=chunk_size, num_inference_steps=num_inference_steps,
        max_state_dim=MAX_DIM, max_action_dim=MAX_DIM)


def _build_tiny_pi0(out_dir: Path, chunk_size: int, num_inference_steps: int) -> None:
    """Random-weight tiny pi0 + ``PI0Processor``, written with ``save_pretrained``.

    The image processor is SigLIP's PIL one: pi0's own (``PI0ImageProcessor``) needs
    torchvision, which is not a dependency.
    """
    from transformers import PI0ForConditionalGeneration, PI0Processor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = (IMAGE_SIZE // PATCH_SIZE) ** 2
    processor = PI0Processor(image_processor=image_processor, tokenizer=build_tokenizer(),
                             max_state_dim=MAX_DIM, chunk_size=chunk_size)
    cfg = tiny_pi0_config(len(processor.tokenizer), processor.image_token_id, chunk_size,
                          num_inference_steps)
    torch.manual_seed(SEED)
    PI0ForConditionalGeneration(cfg).save_pretrained(str(out_dir))
    processor.save_pretrained(str(out_dir))


def tiny_pi0_checkpoint(chunk_size: int = 4, num_inference_steps: int = 4) -> str:
    """Directory of the cached tiny pi0 (built on first use, same on every machine)."""
    import transformers

    key = {"name": "pi0", "chunk": chunk_size, "steps": num_inference_steps, "seed": SEED,
           "image": IMAGE_SIZE, "patch": PATCH_SIZE, "width": 128, "layers": 2,
           "transformers": transformers.__version__, "v": 1}
    return cached_build("pi0", key, lambda d: _build_tiny_pi0(d, chunk_size, num_inference_steps))


# ----------------------------------------------------------------------------- policy

def _load_adapter(model: PI0ForConditionalGeneration, path: str | Path) -> nn.Module:
    """Wrap ``model`` with the peft adapter saved at ``<path>/adapter``, refusing any key mismatch.

    Not :func:`vlarl.policies.saving.load_adapter`: peft 0.21's ``set_peft_model_state_dict``
    re-applies transformers' pi0 checkpoint renaming (``state_proj`` ->
    ``embed_action_time.state_proj``) to keys that already carry the new names, doubling the
    prefix. Here the saved keys only get the adapter name inserted, which is all peft saved away.
    """
    from peft import PeftConfig, get_peft_model
    from safetensors.torch import load_file

    adir = Path(path, ADAPTER_DIR)
    pcfg = PeftConfig.from_pretrained(str(adir))
    pcfg.inference_mode = False
    peft_model = get_peft_model(model, pcfg)
    weights = {re.sub(r"\.(lora_[AB])\.", r".\1.default.", k): v
               for k, v in load_file(str(adir / "adapter_model.safetensors")).items()}
    res = peft_model.load_state_dict(weights, strict=False)
    missing = [k for k in res.missing_keys if "lora_" in k]
    if missing or res.unexpected_keys:
        raise RuntimeError(f"{adir}: missing adapter keys {missing}, "
                           f"unexpected keys {list(res.unexpected_keys)}")
    return peft_model


@POLICIES.register("flow_vla")
class FlowVLAPolicy(Policy):
    """pi0 + LoRA (peft) + value head, sampled with noise injection for a tractable log-prob."""

    def __init__(self, model: PI0ForConditionalGeneration, processor: PI0Processor,
                 cfg: FlowVLAConfig, value_head: ValueHead | None = None):
        """``model`` is a plain pi0 (LoRA is applied here per ``cfg``) or an already peft-wrapped one."""
        super().__init__()
        mc = model.config
        if cfg.chunk_size > mc.chunk_size:
            raise ValueError(f"policy.chunk_size={cfg.chunk_size} exceeds the model's chunk_size="
                             f"{mc.chunk_size}; allowed: 1..{mc.chunk_size}")
        if cfg.action_dim > mc.max_action_dim:
            raise ValueError(f"policy.action_dim={cfg.action_dim} exceeds max_action_dim="
                             f"{mc.max_action_dim}; allowed: 1..{mc.max_action_dim}")
        self.cfg = cfg
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        self.processor = processor
        self.model = model if is_peft(model) else apply_lora(model, cfg)
        enable_checkpointing(self.model, cfg)
        hidden = mc.vlm_config.text_config.hidden_size
        self.value_head = (value_head or make_value_head(cfg, hidden)) if cfg.value_head else None
        self.register_buffer("_mask", flow_math.action_mask(
            mc.chunk_size, mc.max_action_dim, cfg.chunk_size, cfg.action_dim), persistent=False)

    # -- construction / persistence ---------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: FlowVLAConfig) -> FlowVLAPolicy:
        """Build from ``cfg.path`` (a saved policy, a pi0 checkpoint dir or hub id) or the tiny pi0."""
        if cfg.path is not None and Path(cfg.path, POLICY_FILE).is_file():
            fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "path"}
            return cls.from_pretrained(cfg.path, **fields)
        if cfg.path is None and cfg.tiny != "pi0":
            raise ConfigError(f"policy.tiny={cfg.tiny!r} is not allowed for flow_vla; choose one of ['pi0']")
        src = cfg.path or tiny_pi0_checkpoint(cfg.chunk_size, cfg.num_inference_steps)
        model, processor = load_base(src, cfg, auto_class=PI0_CLASS)
        return cls(model.requires_grad_(False), processor, cfg)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> FlowVLAPolicy:
        """Load a ``save_pretrained`` directory; a plain pi0 checkpoint / hub id is a base model.

        ``overrides`` are :class:`FlowVLAConfig` fields. As for ``token_vla``: ``use_lora=False`` on a
        LoRA checkpoint merges the adapter; ``use_lora=True`` without one adds fresh adapters.
        """
        if not Path(path, POLICY_FILE).is_file():
            cfg = FlowVLAConfig()
            for k, v in overrides.items():
                set_field(cfg, k, v, "policy.")
            cfg.path = str(path)
            return cls.from_config(cfg)
        name, cfg, meta = read_policy_json(path, **overrides)
        if name != "flow_vla":
            raise ValueError(f"{path} holds a {name!r} policy, not 'flow_vla'")
        refuse_changed(path, cfg, meta, ("use_state",), "the model would misread its inputs")
        model, processor = load_base(Path(path, BASE_DIR), cfg, auto_class=PI0_CLASS)
        model.requires_grad_(False)
        if Path(path, ADAPTER_DIR).is_dir():
            model = _load_adapter(model, path)
            if not cfg.use_lora:
                model = merge_adapters(model).requires_grad_(True)
        policy = cls(model, processor, cfg)
        load_saved_heads(policy, path, meta)
        return policy

    def save_pretrained(self, path: str | Path) -> None:
        """The shared layout of :func:`vlarl.policies.saving.save_checkpoint` (base, adapter, heads)."""
        heads = {"value_head": self.value_head} if self.value_head is not None else {}
        save_checkpoint(path, "flow_vla", self.cfg, self.model, self.processor, heads)

    # -- model access ------------------------------------------------------------------------
    @property
    def pi0(self) -> PI0ForConditionalGeneration:
        """The pi0 module (LoRA layers injected in place, so calls go through the adapters)."""
        return self.model.get_base_model() if is_peft(self.model) else self.model

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Adapters disabled: the frozen base pi0 is the reference policy (TRL's convention)."""
        if is_peft(self.model):
            with self.model.disable_adapter():
                yield
        else:
            yield

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _inputs(self, obs: Obs) -> dict[str, torch.Tensor]:
        """Tokens + pixels via ``PI0Processor``; state zero-padded to ``max_state_dim``.

        The prompt is padded to a fixed length (image tokens of every camera + ``TEXT_TOKENS``),
        not to the batch's longest: a PPO minibatch then sees exactly the tensors of the rollout,
        so ``evaluate`` on any sub-batch reproduces ``act``'s log-probs.
        """
        mc = self.pi0.config
        images = [[img.cpu().numpy() for img in cams] for cams in obs.images]
        length = obs.images.shape[1] * self.processor.image_seq_length + TEXT_TOKENS
        batch = self.processor(images=images, text=list(obs.instructions), return_tensors="pt",
                               padding="max_length", max_length=length, truncation=True)
        dtype = next(self.pi0.parameters()).dtype
        state = obs.state.float()
        if state.shape[-1] > mc.max_state_dim:
            raise ValueError(f"state dim {state.shape[-1]} exceeds max_state_dim={mc.max_state_dim}")
        if not self.cfg.use_state:
            state = torch.zeros_like(state)
        out = {k: v.to(self._device) for k, v in batch.items()}
        out["pixel_values"] = out["pixel_values"].to(dtype)
        out["state"] = F.pad(state, (0, mc.max_state_dim - state.shape[-1])).to(self._device, dtype)
        return out

    def _prefix(self, inp: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """VLM prefix pass (as in ``sample_actions``): KV cache + mask-pooled features ``[N, H]``."""
        pi0 = self.pi0
        embeds = pi0.model.embed_prefix(inp["input_ids"], inp["pixel_values"], inp["pixel_attention_mask"])
        am = inp["attention_mask"]
        out = pi0.model.vlm(inputs_embeds=embeds, attention_mask=am, position_ids=am.cumsum(-1) - 1,
                            token_type_ids=torch.zeros_like(embeds)[:, :, 0], use_cache=True)
        return out.past_key_values, masked_mean_pool(out.last_hidden_state, am)

    def _velocity(self, inp: dict[str, torch.Tensor], cache: Any, x: torch.Tensor,
                  t: float) -> torch.Tensor:
        """One action-expert pass at time ``t`` reusing the prefix cache, which is then cropped back."""
        prefix_len = cache.get_seq_length()
        dtype = inp["state"].dtype
        time = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        v = self.pi0(state=inp["state"], noise=x.to(dtype), timestep=time,
                     attention_mask=inp["attention_mask"], past_key_values=cache).logits
        cache.crop(prefix_len - cache.get_seq_length())
        return v.float()

    def _values(self, pooled: torch.Tensor | None, obs: Obs) -> torch.Tensor | None:
        if self.value_head is None:
            return None
        if self.cfg.critic_input == "privileged":
            return self.value_head(privileged_input(obs, self.cfg.privileged_dim, self._device))
        assert pooled is not None
        return self.value_head(pooled)

    # -- the policy protocol -----------------------------------------------------------------
    def act(self, obs: Obs, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        """Sample a chunk by the noisy Euler sampler (plain ODE when ``deterministic``)."""
        sigma = float(self.cfg.noise_level)
        if not deterministic and sigma <= 0.0:
            raise ValueError(f"policy.noise_level={sigma} must be > 0 for stochastic act(); "
                             "use deterministic=True for the plain ODE")
        mc, n = self.pi0.config, len(obs)
        inp = self._inputs(obs)
        cache, pooled = self._prefix(inp)
        times, dt = flow_math.time_grid(self.cfg.num_inference_steps)
        x = sampling.randn((n, mc.chunk_size, mc.max_action_dim), generator, self._device)
        traj, log_prob = [x], torch.zeros(n, device=x.device)
        for t in times.tolist():
            v = self._velocity(inp, cache, x, t)
            x, mean = flow_math.noisy_euler_step(x, v, dt, sigma, self._mask, generator, deterministic)
            if sigma > 0.0:
                log_prob = log_prob + flow_math.transition_log_prob(x, mean, sigma, self._mask)
            traj.append(x)
        actions = x[:, : self.chunk_size, : self.action_dim].clamp(-1.0, 1.0)
        return ActOutput(actions=actions, log_probs=log_prob, values=None if self.cfg.critic_input == "privileged" and obs.privileged is None
                         else self._values(pooled, obs),
                         stored={"x_traj": torch.stack(traj, 1)})

    def evaluate(self, obs: Obs, stored: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Log-prob of a stored ``x_traj [N, K+1, chunk, A_pad]``: one prefix pass, then K
        batched expert passes that reuse its KV cache (the same calls as :meth:`act`)."""
        x_traj = stored["x_traj"].to(self._device, torch.float32)
        steps = x_traj.shape[1] - 1
        sigma = float(self.cfg.noise_level)
        inp = self._inputs(obs)
        cache, pooled = self._prefix(inp)
        times, dt = flow_math.time_grid(steps)
        log_prob = torch.zeros(x_traj.shape[0], device=self._device)
        for i, t in enumerate(times.tolist()):
            mean = x_traj[:, i] + dt * self._velocity(inp, cache, x_traj[:, i], t)
            if sigma > 0.0:
                log_prob = log_prob + flow_math.transition_log_prob(x_traj[:, i + 1], mean, sigma, self._mask)
        entropy = flow_math.chunk_entropy(sigma, steps, self._mask, x_traj.shape[0], self._device)
        return log_prob, entropy, self._values(pooled, obs)

    def value(self, obs: Obs) -> torch.Tensor | None:
        if self.value_head is None:
            return None
        if self.cfg.critic_input == "privileged":  # no backbone pass needed
            return self._values(None, obs)
        return self._values(self._prefix(self._inputs(obs))[1], obs)

    def prompt_features(self, obs: Obs) -> torch.Tensor:
        """The VLM prefix's mask-pooled last hidden states, fp32 ``[N, H]``, with grad."""
        return self._prefix(self._inputs(obs))[1].float()

    def sft_loss(self, obs: Obs, actions: torch.Tensor, features: bool = False):
        """pi0's own flow-matching loss (MSE of the velocity) on demonstration chunks ``[N, k, A]``;
        ``features``: ``(loss, prompt_features(obs))`` (a second prefix pass)."""
        if features:
            return self.sft_loss(obs, actions), self.prompt_features(obs)
        mc = self.pi0.config
        _, k, a = actions.shape
        if k > mc.chunk_size or a > mc.max_action_dim:
            raise ValueError(f"actions shape {tuple(actions.shape)}: need k <= {mc.chunk_size} "
                             f"and A <= {mc.max_action_dim}")
        inp = self._inputs(obs)
        target = F.pad(actions.float(), (0, mc.max_action_dim - a, 0, mc.chunk_size - k))
        return self.pi0(**inp, actions=target.to(inp["state"])).loss
