"""Peak memory of the token log-probs + entropies that PPO/GRPO's ``evaluate`` computes: the
plain ``log_softmax`` path vlarl used before 2026-12-06 vs TRL's
``selective_log_softmax_and_entropy`` (what ``TokenVLAPolicy.evaluate`` calls now).

Each measurement runs in a fresh process (forward + backward on logits of shape
``[batch, tokens, vocab]``) and reports the growth of its peak RSS over the allocation of
the logits themselves, so the two paths are compared on equal terms. CPU only: on CUDA with
Triton TRL uses a fused kernel instead, which this script does not measure.

    python scripts/logprob_memory.py                    # vocab 64, 256 and 32064
    python scripts/logprob_memory.py --vocab 32064 --batch 52 --tokens 28
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from trl.trainer.utils import selective_log_softmax_and_entropy  # both paths pay the import
path, b, t, v = sys.argv[1], *map(int, sys.argv[2:5])
torch.manual_seed(0)
logits = torch.randn(b, t, v, requires_grad=True)
index = torch.randint(0, v, (b, t))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if path == "log_softmax":
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp.gather(-1, index[..., None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
else:
    lp, ent = selective_log_softmax_and_entropy(logits, index)
(lp.sum() - 0.01 * ent.sum()).backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_growth_mb": round((peak - base) / 1024, 1),
                  "logp_sum": lp.double().sum().item(), "entropy_sum": ent.double().sum().item()}))
"""


def measure(path: str, batch: int, tokens: int, vocab: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, path, str(batch), str(tokens), str(vocab)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=52, help="chunks per minibatch (quickstart PPO: 52)")
    ap.add_argument("--tokens", type=int, default=28, help="tokens per chunk (chunk 4 x 7 dims)")
    ap.add_argument("--vocab", type=int, nargs="+", default=[64, 256, 32064])
    args = ap.parse_args()
    print(f"{'vocab':>7} {'logits MB':>10} {'log_softmax MB':>15} {'TRL MB':>8} {'max |dlogp|':>12}")
    for v in args.vocab:
        old = measure("log_softmax", args.batch, args.tokens, v)
        new = measure("trl", args.batch, args.tokens, v)
        size = args.batch * args.tokens * v * 4 / 2**20
        diff = abs(old["logp_sum"] - new["logp_sum"])
        print(f"{v:>7} {size:>10.1f} {old['peak_growth_mb']:>15.1f} {new['peak_growth_mb']:>8.1f} "
              f"{diff:>12.2e}")


if __name__ == "__main__":
    main()
