"""Screening code of docs/experiments/2026-12-07-success-by-position.md, kept to reproduce it.
The stage it screened is now part of vlarl: ``vlarl sft --sft.grounding_scenes 2000`` (docs/sft.md).

    python docs/experiments/code/grounding_sft.py aux W [--section.field value ...]
        SFT of the quickstart recipe with the grounding target (weight W) on the demo scenes
    python docs/experiments/code/grounding_sft.py pretrain W [--section.field value ...]
        grounding pre-training on 2,000 rendered scenes, then the same SFT

Both patch ``vlarl.methods.sft`` for one run and write an ordinary token-VLA checkpoint to
``sft.output_dir`` (the grounding head is dropped before saving).
"""

import sys
import numpy as np
import torch
from torch import nn
import vlarl.methods.sft as sft_mod
from vlarl.config import load_config
from vlarl.data.dataset import load_demos
from vlarl.policies.token_vla.modeling_token_vla import TokenVLAPolicy

W = 1.0
orig_ds, orig_fit, orig_loss = sft_mod.sft_dataset, sft_mod.fit_sft, TokenVLAPolicy.sft_loss


class WithGoal(torch.utils.data.Dataset):
    def __init__(self, data, goal_per_row):
        self.data, self.goal = data, goal_per_row
    def __len__(self):
        return len(self.data)
    def __getitem__(self, i):
        return {**self.data[i], "privileged": self.goal[i]}


def goals_for(path, cfg):
    import dataclasses
    from vlarl.envs import make_env
    ds = load_demos(path)
    seeds = np.asarray(ds["seed"])
    env = make_env(dataclasses.replace(cfg.env, num_envs=1, backend="inline"))
    cache = {}
    try:
        for s in sorted(set(seeds.tolist())):
            env.reset([int(s)])
            g = env.u.goal_region.pose.p[0, :2].double().numpy()
            cache[s] = torch.tensor([(g[0] - 0.2) * 10, g[1] * 10], dtype=torch.float32)
    finally:
        env.close()
    return [cache[int(s)] for s in seeds]


CFG = None


def patched_ds(paths, chunk_size, action_dim):
    data, sizes = orig_ds(paths, chunk_size, action_dim)
    goal = goals_for(paths[0], CFG)
    assert len(goal) == len(data), (len(goal), len(data))
    print(f"aux target: goal xy for {len(data)} samples, weight {W}", flush=True)
    return WithGoal(data, goal), sizes


def patched_fit(policy, chunks, cfg, **kw):
    policy.aux_head = nn.Linear(policy._base().config.text_config.hidden_size, 2)
    try:
        return orig_fit(policy, chunks, cfg, **kw)
    finally:
        del policy.aux_head


def patched_loss(self, obs, actions):
    loss = orig_loss(self, obs, actions)
    if getattr(self, "aux_head", None) is None or obs.privileged is None:
        return loss
    b = self._encode(obs)
    r = self._prompt_forward(obs, b["input_ids"].shape[1], **b, output_hidden_states=True)
    pred = self.aux_head(r.hidden_states[-1][:, -1].float())
    return loss + W * torch.nn.functional.mse_loss(pred, obs.privileged.to(pred))




import time, dataclasses
import torch
from vlarl.types import Obs

N, STEPS = 2000, 800
import vlarl.policies as vp
orig_build = vp.build_policy


def scenes(cfg):
    from vlarl.envs import make_env
    env = make_env(dataclasses.replace(cfg.env, num_envs=1, backend="inline"))
    ims, sts, ins, gs = [], [], [], []
    try:
        for s in range(500000, 500000 + N):
            o = env.reset([s])
            g = env.u.goal_region.pose.p[0, :2].double().numpy()
            ims.append(o.images[0]); sts.append(o.state[0]); ins.append(o.instructions[0])
            gs.append(torch.tensor([(g[0] - 0.2) * 10, g[1] * 10], dtype=torch.float32))
    finally:
        env.close()
    return torch.stack(ims), torch.stack(sts), ins, torch.stack(gs)


def build_and_pretrain(pcfg):
    policy = orig_build(pcfg)
    t0 = time.time()
    ims, sts, ins, gs = scenes(CFG)
    print(f"scenes: {N} in {time.time() - t0:.0f} s", flush=True)
    head = nn.Linear(policy._base().config.text_config.hidden_size, 2)
    params = [p for p in policy.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    policy.train()
    for step in range(STEPS):
        idx = torch.randint(0, N, (32,), generator=g)
        obs = Obs(images=ims[idx], state=sts[idx], instructions=[ins[i] for i in idx.tolist()])
        b = policy._encode(obs)
        r = policy._prompt_forward(obs, b["input_ids"].shape[1], **b, output_hidden_states=True)
        loss = nn.functional.mse_loss(head(r.hidden_states[-1][:, -1].float()), gs[idx])
        opt.zero_grad(); loss.backward(); nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"pretrain step {step} mse {float(loss):.4f} ({time.time() - t0:.0f} s)", flush=True)
    return policy




if __name__ == "__main__":
    MODE, W = sys.argv[1], float(sys.argv[2])
    sft_mod.sft_dataset, sft_mod.fit_sft, TokenVLAPolicy.sft_loss = patched_ds, patched_fit, patched_loss
    CFG = load_config("recipes/cpu/quickstart.yaml", sys.argv[3:])
    if MODE == "pretrain":
        vp.build_policy = build_and_pretrain
    elif MODE != "aux":
        raise SystemExit(f"mode {MODE!r}: choose aux or pretrain")
    sft_mod.run_sft(CFG)
