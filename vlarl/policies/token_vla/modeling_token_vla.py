"""Discrete-action-token VLA (RT-2 / OpenVLA style) over any transformers image-text-to-text model.

Each of the k*A action numbers of a chunk is one token: the action is clipped and binned
(:class:`ActionTokenizer`), and bin ``b`` is the vocabulary id ``V - bins + b`` - the last
``bins`` ids of the language model's vocabulary. That works on any checkpoint without
resizing embeddings (LoRA alone can learn to emit them); the tiny models name those ids
``<act_b>`` (see ``tiny.add_action_tokens``). ``action_token_layout: openvla`` switches to
OpenVLA's exact ids and binning instead (:class:`OpenVLAActionTokenizer`: descending ids
below ``tokenizer.vocab_size``), so OpenVLA checkpoints act as trained.

Prompt: an image placeholder per camera + ``policy.prompt_template`` + " state:", the token
the projected proprio state is added to (or, ``state_input: text``, its bins as words).

* ``act``: one prefix forward (KV cache), then k*A single-token steps; logits are restricted
  to the action ids and divided by ``temperature``; log-probs are summed over the chunk.
  With ``decoding="parallel"`` (OpenVLA-OFT) the k*A-1 inputs after the prompt are a fixed
  placeholder id instead of the previous action tokens, so one forward gives every token's
  distribution (sampled independently); training, SFT and evaluate use the same layout.
* ``evaluate``: one teacher-forced forward over prefix + tokens -> the same log-probs.
* ``values``: :class:`ValueHead` on the masked mean of the prefix's last hidden states, or
  (``critic_input: privileged``) on the simulator state.
* LoRA (peft) or full fine-tuning; ``reference()`` = peft ``disable_adapter()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlarl.config import set_field
from vlarl.policies import POLICIES
from vlarl.policies.base import Policy
from vlarl.policies.common import (
    apply_lora,
    enable_checkpointing,
    is_peft,
    make_value_head,
    masked_mean_pool,
    merge_adapters,
    privileged_input,
)
from vlarl.policies.sampling import multinomial, point_token
from vlarl.policies.saving import (
    ADAPTER_DIR,
    BASE_DIR,
    POLICY_FILE,
    load_adapter,
    load_base,
    load_saved_heads,
    read_policy_json,
    refuse_changed,
    save_checkpoint,
)
from vlarl.policies.token_vla import inputs as prompt_inputs
from vlarl.policies.token_vla import state_input
from vlarl.policies.token_vla.action_tokenizer import action_ids
from vlarl.policies.token_vla.configuration_token_vla import LEGACY_DEFAULTS, TokenVLAConfig
from vlarl.policies.token_vla.prismatic import is_prismatic, prismatic_forward
from vlarl.types import ActOutput, Obs


@POLICIES.register("token_vla")
class TokenVLAPolicy(Policy):
    """A VLA emitting k*A discrete action tokens per decision; see the module docstring."""

    def __init__(self, model: nn.Module, processor: Any, cfg: TokenVLAConfig):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.processor = processor
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        text_cfg = self._base().config.get_text_config()
        tok = processor.tokenizer
        # Batched decoding appends tokens at the end of every row: the padding goes in front
        # (many checkpoints, OpenVLA's Llama tokenizer among them, ship padding_side="right").
        tok.padding_side = "left"
        self.action_start, self.action_tokenizer = action_ids(tok, self._base(), cfg)
        if "{instruction}" not in cfg.prompt_template:
            raise ValueError(f"policy.prompt_template={cfg.prompt_template!r} must contain "
                             "'{instruction}'")
        self.state_tokenizer = state_input.state_tokenizer(cfg)  # state_input: text
        # PaliGemma (and remote-code subclasses of it) counts positions from 1; most from 0.
        paligemma = any(c.__name__ == "PaliGemmaForConditionalGeneration"
                        for c in type(self._base()).__mro__)
        self.position_offset = 1 if paligemma else 0
        self.image_token = prompt_inputs.image_placeholder(processor)  # per camera
        self.value_head = make_value_head(cfg, text_cfg.hidden_size)
        self.state_proj = state_input.projector_for(cfg, text_cfg.hidden_size)  # state_input: embedding
        self._in_reference = False
        # Parallel decoding's inputs: slot j of the chunk is fed the fixed id
        # action_start - k*A + j (on PaliGemma checkpoints: its rarely used <loc>/<seg> ids).
        # Distinct ids tell the slots apart; one shared id (e.g. pad, whose embedding is zero
        # in Gemma) leaves every slot with the same query and the same prediction.
        steps = cfg.chunk_size * cfg.action_dim
        if cfg.decoding == "parallel" and steps > self.action_start:
            raise ValueError(f"policy.decoding=parallel needs chunk_size*action_dim={steps} "
                             f"placeholder ids below the action ids (only {self.action_start})")
        self.placeholder_ids = torch.arange(max(self.action_start - steps, 0), self.action_start)
        # OpenVLA's Prismatic forward is batch-1 only: its parts run through the batched adapter
        self._prismatic = is_prismatic(self._base())
        if not self._prismatic:
            prompt_inputs.check_forward_signature(self._base())
        enable_checkpointing(self.model, cfg)
        self.model.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg: TokenVLAConfig) -> TokenVLAPolicy:
        """Build from a base checkpoint (``cfg.path``) or the tiny ``cfg.tiny`` model."""
        if cfg.path is not None and Path(cfg.path, POLICY_FILE).is_file():
            fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "path"}
            return cls.from_pretrained(cfg.path, **fields)
        if cfg.path is None:
            from vlarl.policies.tiny import tiny_checkpoint

            src = tiny_checkpoint(cfg.tiny, cfg.action_bins)
        else:
            src = cfg.path
        model, processor = load_base(src, cfg)
        return cls(apply_lora(model, cfg, cfg.lora_lm_head), processor, cfg)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> TokenVLAPolicy:
        """Load a ``save_pretrained`` directory; a plain HF checkpoint / hub id is a base model.

        ``overrides`` are :class:`TokenVLAConfig` fields. ``use_lora=False`` on a LoRA checkpoint merges
        the adapter (full fine-tuning from there); ``use_lora=True`` on a checkpoint without
        an adapter adds fresh LoRA adapters (e.g. RL after full-finetune SFT).
        """
        if not Path(path, POLICY_FILE).is_file():
            cfg = TokenVLAConfig()
            for k, v in overrides.items():
                set_field(cfg, k, v, "policy.")
            cfg.path = str(path)
            return cls.from_config(cfg)
        _, cfg, meta = read_policy_json(path, legacy=LEGACY_DEFAULTS, **overrides)
        refuse_changed(path, cfg, meta, ("decoding", "use_state", "state_input", "action_bins"),
                       "the model would misread its inputs or outputs")
        model, processor = load_base(Path(path, BASE_DIR), cfg)
        if Path(path, ADAPTER_DIR).is_dir():
            model = load_adapter(model, path)
            if not cfg.use_lora:
                model = merge_adapters(model).requires_grad_(True)
        else:
            model = apply_lora(model, cfg, cfg.lora_lm_head)
        policy = cls(model, processor, cfg)
        load_saved_heads(policy, path, meta)
        if policy.state_proj is not None and is_peft(policy.model):  # part of the frozen base
            policy.state_proj.requires_grad_("state_proj" not in meta.get("heads", []))
        return policy

    def save_pretrained(self, path: str | Path) -> None:
        """Base model + processor, peft adapter, heads and ``vlarl_policy.json`` (see saving.py)."""
        heads = {n: m for n, m in (("value_head", self.value_head), ("state_proj", self.state_proj))
                 if m is not None}
        save_checkpoint(path, "token_vla", self.cfg, self.model, self.processor, heads)

    def merge_and_unload(self) -> TokenVLAPolicy:
        """Fold the LoRA adapters into the base weights (deployment); a no-op without LoRA."""
        if is_peft(self.model):
            self.model = merge_adapters(self.model)
            self.cfg = dataclasses.replace(self.cfg, use_lora=False)
        return self

    def _base(self) -> nn.Module:
        return self.model.get_base_model() if is_peft(self.model) else self.model

    def _forward(self, **inputs: Any):
        """The backbone's forward, or the batched Prismatic one (:mod:`.prismatic`) for OpenVLA."""
        if self._prismatic:
            return prismatic_forward(self._base(), **inputs)
        return self.model(**inputs)

    def _prompt_forward(self, obs: Obs, prefix: int, **inputs: Any):
        """``_forward`` over inputs that start with the ``prefix``-token prompt; with
        ``state_input: embedding`` the projected state is added at its last token."""
        vec = None
        if self.state_proj is not None and obs.state.numel() and not self._in_reference:
            vec = self.state_proj(obs.state.to(self.device))
        with state_input.added_at(self._base().get_input_embeddings(), prefix - 1, vec):
            return self._forward(**inputs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The reference policy: the same model with LoRA adapters disabled (no second copy),
        and without a state projector that trains with them (fresh: zero at the start)."""
        if not is_peft(self.model):
            raise RuntimeError("reference() needs LoRA adapters (policy.use_lora=true); a fully "
                               "fine-tuned policy has no frozen reference inside it")
        proj = self.state_proj
        self._in_reference = proj is not None and any(p.requires_grad for p in proj.parameters())
        try:
            with self.model.disable_adapter():
                yield
        finally:
            self._in_reference = False

    # ------------------------------------------------------------------ inputs

    def prompts(self, obs: Obs) -> list[str]:
        """Prompt text per env (image placeholders + instruction + optional state)."""
        cams = obs.images.shape[1]
        out = []
        for i, instr in enumerate(obs.instructions):
            task = instr.strip().rstrip(".?").lower()
            text = self.image_token * cams + self.cfg.prompt_template.replace("{instruction}", task)
            if self.cfg.use_state and obs.state.numel():
                text += state_input.state_words(obs.state[i], self.cfg.state_low,
                                    None if self.state_proj is not None else self.state_tokenizer)
            out.append(text)
        return out

    def _encode(self, obs: Obs) -> dict[str, torch.Tensor]:
        """Processor outputs (left-padded) + explicit position ids, on the model's device."""
        images = [list(cams) for cams in obs.images.cpu().numpy()]
        if self._prismatic:  # OpenVLA's processor takes one PIL image per prompt
            from PIL import Image

            if len(images[0]) != 1:
                raise ValueError(f"{type(self._base()).__name__} takes one camera image per "
                                 f"step; the env gives {len(images[0])}")
            images = [Image.fromarray(cams[0]) for cams in images]
        return prompt_inputs.encode(self.processor, self._base(), images, self.prompts(obs),
                      self.position_offset, self.device, next(self.model.parameters()).dtype)

    def _masked_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits restricted to the action ids, in fp32, divided by the temperature."""
        ids = slice(self.action_start, self.action_start + self.cfg.action_bins)
        return logits[..., ids].float() / self.cfg.temperature

    def _values(self, hidden: torch.Tensor | None, mask: torch.Tensor,
                obs: Obs) -> torch.Tensor | None:
        if self.value_head is None:
            return None
        if self.cfg.critic_input == "privileged":
            return self.value_head(privileged_input(obs, self.cfg.privileged_dim, self.device))
        assert hidden is not None
        pooled = masked_mean_pool(hidden, mask)
        if self.cfg.detach_value_features:  # critic gradients stay out of the actor's adapters
            pooled = pooled.detach()
        return self.value_head(pooled)

    # ------------------------------------------------------------------ protocol

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False,
            generator: torch.Generator | None = None) -> ActOutput:
        """Sample k*A action tokens autoregressively with a KV cache; see the module docstring."""
        n, steps = len(obs), self.chunk_size * self.action_dim
        if self.cfg.decoding == "parallel":
            return self._act_parallel(obs, deterministic, generator)
        batch = self._encode(obs)
        out = self._prompt_forward(obs, batch["input_ids"].shape[1], **batch, use_cache=True,
                                   output_hidden_states=True, logits_to_keep=1)
        values = self._act_values(out.hidden_states[-1], batch["attention_mask"], obs)
        mask, pos = batch["attention_mask"], batch["position_ids"][..., -1:]
        tokens = torch.empty(n, steps, dtype=torch.long, device=self.device)
        token_logp = torch.empty(n, steps, dtype=torch.float32, device=self.device)
        past = out.past_key_values
        for t in range(steps):
            logp = torch.log_softmax(self._masked_logits(out.logits[:, -1]), dim=-1)
            if deterministic:
                tok = point_token(logp, self.cfg.point_estimate)
            else:
                tok = multinomial(logp.exp(), generator).squeeze(-1)
            tokens[:, t] = tok
            token_logp[:, t] = logp.gather(-1, tok[:, None]).squeeze(-1)
            if t + 1 == steps:
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            pos = pos + 1
            out = self._forward(input_ids=tok[:, None] + self.action_start, attention_mask=mask,
                                position_ids=pos, past_key_values=past, use_cache=True)
            past = out.past_key_values
        return self._output(tokens, token_logp, values)

    def _output(self, tokens: torch.Tensor, token_logp: torch.Tensor,
                values: torch.Tensor | None) -> ActOutput:
        """The chunk's actions and log-prob (tokens summed in float64, so act() and evaluate()
        round to the same float32); the tokens and their log-probs are stored for the update."""
        actions = self.action_tokenizer.detokenize(tokens).view(-1, self.chunk_size, self.action_dim)
        return ActOutput(actions=actions, log_probs=token_logp.double().sum(-1).float(),
                         values=values, stored={"tokens": tokens, "token_log_probs": token_logp})

    def _act_parallel(self, obs: Obs, deterministic: bool,
                      generator: torch.Generator | None) -> ActOutput:
        """Every token of the chunk from one forward over prompt + placeholders."""
        n, steps = len(obs), self.chunk_size * self.action_dim
        dummy = torch.zeros(n, steps, dtype=torch.long, device=self.device)
        out, batch, prefix = self._teacher_forced(obs, dummy)
        logp = torch.log_softmax(self._masked_logits(out.logits), dim=-1)  # [N, T, bins]
        if deterministic:
            tokens = point_token(logp, self.cfg.point_estimate)
        else:
            tokens = multinomial(logp.exp().view(n * steps, -1), generator).view(n, steps)
        values = None if self.value_head is None else self._act_values(
            self._prefix_hidden(out, prefix), batch["attention_mask"], obs)
        return self._output(tokens, logp.gather(-1, tokens[..., None]).squeeze(-1), values)

    def _teacher_forced(self, obs: Obs, tokens: torch.Tensor, labels: bool = False,
                        hidden: bool = False):
        """One forward over prompt + action tokens; returns (model output, batch, prefix length)."""
        batch = self._encode(obs)
        _n, prefix = batch["input_ids"].shape
        steps = tokens.shape[1]
        ids = tokens.to(self.device) + self.action_start
        # Without labels the last action token is never an input (nothing is predicted from it).
        feed = ids if labels else ids[:, :-1]
        if self.cfg.decoding == "parallel":  # the inputs never depend on the sampled tokens
            feed = self.placeholder_ids[: feed.shape[1]].to(feed.device).expand_as(feed)
        full = prompt_inputs.extend(batch, feed)
        kwargs: dict[str, Any] = {"output_hidden_states": self._critic_on_features or hidden}
        if labels:
            lab = torch.full_like(full["input_ids"], -100)
            lab[:, prefix:] = ids
            kwargs["labels"] = lab
        else:
            kwargs["logits_to_keep"] = steps
        return self._prompt_forward(obs, prefix, **full, **kwargs), batch, prefix

    def evaluate(self, obs: Obs, stored: dict[str, torch.Tensor], per_token: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Teacher-forced ``(log_probs [N], entropy [N], values [N] | None)`` of stored tokens
        (``per_token``: log-probs ``[N, k*A]``, one per action token).

        Entropy is the sum over the chunk's tokens of the masked, tempered distribution's entropy.
        """
        # TRL's one-pass selected log-softmax + entropy (chunked over rows; a fused Triton
        # kernel where available), on the action bins' tempered logits.
        from trl.trainer.utils import selective_log_softmax_and_entropy

        tokens = stored["tokens"]
        out, batch, prefix = self._teacher_forced(obs, tokens)
        token_logp, token_ent = selective_log_softmax_and_entropy(
            self._masked_logits(out.logits), tokens.to(self.device))  # [N, T] each
        log_probs = token_logp.float() if per_token else token_logp.double().sum(-1).float()
        entropy = token_ent.double().sum(-1).float()
        values = None
        if self.value_head is not None:
            values = self._values(self._prefix_hidden(out, prefix), batch["attention_mask"], obs)
        return log_probs, entropy, values

    def value(self, obs: Obs) -> torch.Tensor | None:
        """Value estimates ``[N]`` from one prefix forward (no sampling)."""
        if self.value_head is None:
            return None
        if not self._critic_on_features:  # the privileged critic needs no backbone pass
            return self._values(None, torch.ones(0), obs)
        return self._values(*self._prompt_hidden(obs), obs)

    def _prompt_hidden(self, obs: Obs) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt forward: the last layer's hidden states ``[N, P, H]`` and the mask."""
        batch = self._encode(obs)
        out = self._prompt_forward(obs, batch["input_ids"].shape[1], **batch,
                                   output_hidden_states=True, logits_to_keep=1)
        return out.hidden_states[-1], batch["attention_mask"]

    def _act_values(self, hidden: torch.Tensor | None, mask: torch.Tensor,
                    obs: Obs) -> torch.Tensor | None:
        """Values for ``act``: None when a privileged critic gets no privileged state (eval
        envs do not produce it; training envs always do - the trainer checks)."""
        if self.cfg.critic_input == "privileged" and obs.privileged is None:
            return None
        return self._values(hidden, mask, obs)

    @property
    def _critic_on_features(self) -> bool:
        return self.value_head is not None and self.cfg.critic_input == "features"

    def _prefix_hidden(self, out: Any, prefix: int) -> torch.Tensor | None:
        return out.hidden_states[-1][:, :prefix] if self._critic_on_features else None

    def prompt_features(self, obs: Obs) -> torch.Tensor:
        """The last layer's hidden state at the prompt's last token, fp32 ``[N, H]``, with grad."""
        return self._prompt_hidden(obs)[0][:, -1].float()

    def sft_loss(self, obs: Obs, actions: torch.Tensor, features: bool = False):
        """Cross-entropy of expert chunks ``actions [N, k, A]`` as action tokens.

        The model's own loss with labels (-100 on the prompt): over the full vocabulary, so
        SFT also moves probability mass into the action ids (as OpenVLA fine-tuning does).
        ``features``: ``(loss, prompt_features(obs))`` from the same forward (the prompt's
        hidden states do not attend to the action tokens, a causal suffix).
        """
        n = actions.shape[0]
        if tuple(actions.shape[1:]) != (self.chunk_size, self.action_dim):
            raise ValueError(f"actions shape {tuple(actions.shape)} must be [N, {self.chunk_size}, "
                             f"{self.action_dim}] (policy.chunk_size, policy.action_dim)")
        tokens = self.action_tokenizer.tokenize(actions).view(n, -1)
        out, _, prefix = self._teacher_forced(obs, tokens, labels=True, hidden=features)
        return (out.loss, out.hidden_states[-1][:, prefix - 1].float()) if features else out.loss
