"""Flow-matching VLA (pi0) as an RL policy: noisy Euler sampler with an exact likelihood.

``transformers.PI0ForConditionalGeneration`` is a PaliGemma VLM (the *prefix*: images +
instruction) plus a Gemma action expert (the *suffix*: state + noisy action chunk + time)
that predicts a velocity. We keep pi0's own pieces - ``embed_prefix``, the VLM prefix KV
cache, ``forward(state, noise, timestep, past_key_values)`` for one velocity, its
flow-matching loss for SFT - and replace only the deterministic ODE loop of
``sample_actions`` by the Flow-Noise / ReinFlow sampler of :mod:`vlarl.policies.flow_math`,
so each denoising step is a Gaussian transition and the chunk has a log-probability.

Data flow per decision: ``Obs`` -> ``PI0Processor`` (tokens, pixels) -> prefix pass once
(KV cache + pooled features -> value head) -> K suffix passes reusing the cache ->
``x_traj [N, K+1, chunk, A_pad]`` -> actions ``clip(x_K[:, :k, :A], -1, 1)``.
``evaluate`` replays the same K suffix passes on the stored trajectory, with grad.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vlarl.config import PolicyConfig
from vlarl.policies import flow_math
from vlarl.policies.base import Policy
from vlarl.types import ActOutput, Obs

if TYPE_CHECKING:
    from transformers import PI0ForConditionalGeneration, PI0Processor

try:  # the registry lives in the package __init__ (written in parallel); see report
    from vlarl.policies import POLICIES
except ImportError:  # pragma: no cover - only while the package __init__ is missing
    from vlarl.registry import Registry

    POLICIES = Registry("policy")

POLICY_FILE = "vlarl_policy.json"


# ----------------------------------------------------------------------------- tiny model

def tiny_pi0_config(vocab_size: int, image_token_id: int, chunk_size: int = 4,
                    num_inference_steps: int = 4, image_size: int = 64, width: int = 128,
                    layers: int = 2, max_dim: int = 32) -> Any:
    """A ~1.3 M-parameter ``PI0Config``: 2-layer 128-wide SigLIP, Gemma VLM and Gemma expert.

    The VLM and the action expert must share layer count, KV heads and head_dim because the
    expert attends to the VLM's per-layer KV cache.
    """
    from transformers import PI0Config

    gemma = dict(model_type="gemma", hidden_size=width, num_hidden_layers=layers,
                 intermediate_size=2 * width, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=width // 2)
    return PI0Config(
        vlm_config=dict(
            model_type="paligemma", text_config=dict(gemma, vocab_size=vocab_size),
            vision_config=dict(model_type="siglip_vision_model", hidden_size=width,
                               intermediate_size=2 * width, num_hidden_layers=layers,
                               num_attention_heads=2, patch_size=16, image_size=image_size,
                               vision_use_head=False),
            projection_dim=width, image_token_id=image_token_id, vocab_size=vocab_size),
        dit_config=gemma, chunk_size=chunk_size, num_inference_steps=num_inference_steps,
        max_state_dim=max_dim, max_action_dim=max_dim)


def build_tiny_pi0(save_dir: str | Path, chunk_size: int = 4, num_inference_steps: int = 4,
                   image_size: int = 64, seed: int = 0) -> Path:
    """Build a random-weight tiny pi0 + ``PI0Processor`` offline and ``save_pretrained`` both.

    Loading the result goes through the same ``from_pretrained`` code as a real checkpoint.
    The image processor is SigLIP's PIL one: pi0's own needs torchvision, absent here.
    """
    from transformers import PI0ForConditionalGeneration, PI0Processor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from vlarl.policies.tokenizer import build_tokenizer

    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // 16) ** 2  # one token per 16x16 patch
    processor = PI0Processor(image_processor=image_processor, tokenizer=build_tokenizer(),
                             max_state_dim=32, chunk_size=chunk_size)
    cfg = tiny_pi0_config(len(processor.tokenizer), processor.image_token_id, chunk_size,
                          num_inference_steps, image_size)
    torch.manual_seed(seed)
    model = PI0ForConditionalGeneration(cfg)
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    return save_dir


# ----------------------------------------------------------------------------- policy

def _value_head(hidden: int) -> nn.Module:
    head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
    nn.init.zeros_(head[-1].weight)  # start at V = 0: no random critic bias at update 1
    nn.init.zeros_(head[-1].bias)
    return head


@POLICIES.register("flow_vla")
class FlowVLAPolicy(Policy):
    """pi0 + LoRA (peft) + value head, sampled with noise injection for a tractable log-prob."""

    def __init__(self, model: "PI0ForConditionalGeneration", processor: "PI0Processor",
                 cfg: PolicyConfig, value_head: nn.Module | None = None):
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
        if cfg.use_lora:
            from peft import LoraConfig, PeftModel, get_peft_model

            if not isinstance(model, PeftModel):
                targets = cfg.lora_target_modules
                model = get_peft_model(model, LoraConfig(
                    r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                    target_modules=targets if targets == "all-linear" else targets.split(",")))
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        self.model = model
        hidden = mc.vlm_config.text_config.hidden_size
        self.value_head = (value_head or _value_head(hidden)) if cfg.value_head else None
        self.register_buffer("_mask", flow_math.action_mask(
            mc.chunk_size, mc.max_action_dim, cfg.chunk_size, cfg.action_dim), persistent=False)

    # -- construction / persistence ---------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: PolicyConfig, cache_dir: str | Path | None = None) -> "FlowVLAPolicy":
        """``cfg.path`` (a pi0 checkpoint or a saved policy) or a freshly built tiny pi0."""
        if cfg.path is not None:
            return cls.from_pretrained(cfg.path, cfg=cfg)
        from vlarl.policies.tokenizer import cache_root

        root = Path(cache_dir) if cache_dir else cache_root() / "tiny_pi0"
        tiny = root / f"k{cfg.chunk_size}-s{cfg.num_inference_steps}"
        if not (tiny / "config.json").is_file():
            build_tiny_pi0(tiny, cfg.chunk_size, cfg.num_inference_steps)
        return cls._from_base(tiny, cfg)

    @classmethod
    def _from_base(cls, base: Path, cfg: PolicyConfig) -> "FlowVLAPolicy":
        from transformers import PI0ForConditionalGeneration, PI0Processor

        dtype = getattr(torch, cfg.dtype)
        model = PI0ForConditionalGeneration.from_pretrained(str(base), dtype=dtype)
        model.requires_grad_(False)
        return cls(model, PI0Processor.from_pretrained(str(base)), cfg)

    def save_pretrained(self, path: str | Path) -> None:
        """``base/`` (pi0 + processor), ``adapter/`` (peft), ``value_head.pt``, ``vlarl_policy.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.pi0.save_pretrained(path / "base") if not self.cfg.use_lora else \
            self.model.get_base_model().save_pretrained(path / "base", state_dict=self._base_state())
        self.processor.save_pretrained(path / "base")
        if self.cfg.use_lora:
            self.model.save_pretrained(path / "adapter")
        if self.value_head is not None:
            torch.save(self.value_head.state_dict(), path / "value_head.pt")
        (path / POLICY_FILE).write_text(json.dumps({"name": "flow_vla", **vars(self.cfg)}, indent=2))

    def _base_state(self) -> dict[str, torch.Tensor]:
        """Base weights without LoRA tensors and with peft's ``base_layer.`` infix removed."""
        out = {}
        for k, v in self.model.get_base_model().state_dict().items():
            if "lora_" in k:
                continue
            out[k.replace(".base_layer.", ".")] = v
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: PolicyConfig | None = None,
                        **overrides) -> "FlowVLAPolicy":
        """Load a saved policy directory, or wrap a plain pi0 checkpoint directory."""
        path = Path(path)
        if (path / POLICY_FILE).is_file():
            saved = json.loads((path / POLICY_FILE).read_text())
            saved.pop("name", None)
            cfg = cfg or PolicyConfig(**saved)
        cfg = cfg or PolicyConfig(name="flow_vla")
        for k, v in overrides.items():
            setattr(cfg, k, v)
        if not (path / POLICY_FILE).is_file():
            return cls._from_base(path, cfg)
        policy = cls._from_base(path / "base", PolicyConfig(**{**vars(cfg), "use_lora": False}))
        model = policy.model
        model.requires_grad_(False)
        if cfg.use_lora:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path / "adapter"), is_trainable=True)
        head = None
        if cfg.value_head and (path / "value_head.pt").is_file():
            head = _value_head(model.config.vlm_config.text_config.hidden_size)
            head.load_state_dict(torch.load(path / "value_head.pt", weights_only=True))
        return cls(model, policy.processor, cfg, value_head=head)

    # -- model access ------------------------------------------------------------------------
    @property
    def pi0(self) -> "PI0ForConditionalGeneration":
        """The pi0 module (LoRA layers injected in place, so calls go through the adapters)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Adapters disabled: the frozen base pi0 is the reference policy (TRL's convention)."""
        if hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield
        else:
            yield

    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _inputs(self, obs: Obs) -> dict[str, torch.Tensor]:
        """Tokens + pixels via ``PI0Processor``; state zero-padded to ``max_state_dim``."""
        mc = self.pi0.config
        images = [[img.cpu().numpy() for img in cams] for cams in obs.images]
        batch = self.processor(images=images, text=list(obs.instructions), return_tensors="pt")
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
        w = am.unsqueeze(-1).to(out.last_hidden_state.dtype)
        pooled = (out.last_hidden_state * w).sum(1) / w.sum(1).clamp_min(1.0)
        return out.past_key_values, pooled

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

    def _values(self, pooled: torch.Tensor) -> torch.Tensor | None:
        return None if self.value_head is None else self.value_head(pooled.float()).squeeze(-1)

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
        x = torch.randn((n, mc.chunk_size, mc.max_action_dim), generator=generator,
                        device=self._device, dtype=torch.float32)
        traj, log_prob = [x], torch.zeros(n, device=x.device)
        for t in times.tolist():
            v = self._velocity(inp, cache, x, t)
            x, mean = flow_math.noisy_euler_step(x, v, dt, sigma, self._mask, generator, deterministic)
            if sigma > 0.0:
                log_prob = log_prob + flow_math.transition_log_prob(x, mean, sigma, self._mask)
            traj.append(x)
        actions = x[:, : self.chunk_size, : self.action_dim].clamp(-1.0, 1.0)
        return ActOutput(actions=actions, log_probs=log_prob, values=self._values(pooled),
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
        return log_prob, entropy, self._values(pooled)

    def value(self, obs: Obs) -> torch.Tensor | None:
        if self.value_head is None:
            return None
        return self._values(self._prefix(self._inputs(obs))[1])

    def sft_loss(self, obs: Obs, actions: torch.Tensor) -> torch.Tensor:
        """pi0's own flow-matching loss (MSE of the velocity) on demonstration chunks ``[N, k, A]``."""
        mc = self.pi0.config
        n, k, a = actions.shape
        if k > mc.chunk_size or a > mc.max_action_dim:
            raise ValueError(f"actions shape {tuple(actions.shape)}: need k <= {mc.chunk_size} "
                             f"and A <= {mc.max_action_dim}")
        inp = self._inputs(obs)
        target = F.pad(actions.float(), (0, mc.max_action_dim - a, 0, mc.chunk_size - k))
        return self.pi0(**inp, actions=target.to(inp["state"])).loss
