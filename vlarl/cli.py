"""`vlarl <command>`: collect, sft, train, ire, eval, compare, diagnose, drift, distill, rldg,
bench, quickstart, demo, expert, doctor.

Every command takes ``--config recipe.yaml`` and ``--section.field value`` overrides (one
style everywhere). Heavy libraries are imported only inside the command that needs them, so
``vlarl --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

# sections of vlarl.config.Config that each command reads (for --help)
SECTIONS = {
    "collect": ["env", "data"],
    "sft": ["env", "policy", "data", "sft"],
    "train": ["env", "policy", "algo", "train", "eval"],
    "ire": ["ire", "env", "policy", "algo", "train", "data", "sft", "eval"],
    "eval": ["env", "policy", "eval"],
    "compare": [],
    "diagnose": ["env", "policy", "eval"],
    "distill": ["env", "policy", "distill", "eval", "algo", "train"],
    "drift": [],
    "rldg": [],
    "quickstart": [],
    "bench": [],
    "demo": ["env"],
    "expert": ["env", "eval"],
    "doctor": [],
}
HELP = {
    "collect": "collect demonstrations (scripted expert, or a policy: --data.expert DIR) into a dataset",
    "sft": "supervised fine-tuning of a VLA on demonstrations (the RL starting point)",
    "train": "RL fine-tuning (PPO / GRPO / RLOO) of a VLA with LoRA, under accelerate",
    "ire": "iRe-VLA: rounds of RL (LoRA) then SFT on successful rollouts + demos",
    "eval": "evaluate checkpoints on seeded episodes with 95%% CIs, OOD splits, reports",
    "compare": "pair checkpoints across separate eval reports (same seeds): differences, CIs, p",
    "diagnose": "failure-mode search: sweep the OOD axes for one checkpoint, rank by success drop",
    "distill": "distill a (RL-tuned) VLA teacher into a small fast student (BC / DAgger / RPD)",
    "drift": "KL of a fine-tuned policy to its base on dataset states (vlarl drift POLICY BASE --dataset D)",
    "rldg": "RLDG's pieces: env speed by observation mode (rldg speed), BC warm start (rldg bc)",
    "quickstart": "the whole chain: demos -> SFT -> RL -> eval -> distill -> eval, one table",
    "bench": "throughput / memory benchmark: env, policy, loop, pipeline, contention, workers (ratios in one run)",
    "demo": "make a ManiSkill env through vlarl, step it with the expert, print what happened",
    "expert": "measure a task's scripted expert: success with 95%% CI and episode length per split",
    "doctor": "check the install: versions, render device, GPU simulation, wandb",
}


def _options_epilog(sections: list[str]) -> str:
    if not sections:
        return ""
    from vlarl import config as C
    from vlarl.config.policy import DEFAULT_POLICY

    classes = {"env": C.EnvConfig, "policy": C.PolicyConfig, "algo": C.AlgoConfig,
               "train": C.TrainConfig, "data": C.DataConfig, "sft": C.SFTConfig,
               "eval": C.EvalConfig, "distill": C.DistillConfig, "ire": C.IreConfig}
    lines = ["config fields (YAML recipe keys; override any as --section.field VALUE):"]
    for sec in sections:
        # the policy section: the fields every policy has, then each policy's own
        parts = [(classes[sec], classes[sec], "")] if sec != "policy" else \
            [(C.PolicyConfig, C.POLICY_CONFIGS[DEFAULT_POLICY], "")] + \
            [(cls, cls, f" [policy.name={name}]") for name, cls in sorted(
                C.POLICY_CONFIGS.items(), key=lambda item: item[0] != DEFAULT_POLICY)]
        shared = C.field_docs(C.PolicyConfig)
        for cls, default_cls, only in parts:
            default = default_cls()
            for name, doc in C.field_docs(cls).items():
                if (sec, name) == ("env", "task"):  # the registry's names, never a hand-kept list
                    from vlarl.envs.tasks import TASKS

                    doc += " Registered: " + ", ".join(sorted(TASKS)) + "."
                if only and name in shared:
                    continue
                lines.append(f"  --{sec}.{name} (default {getattr(default, name)!r}){only}")
                lines.extend(textwrap.wrap(" ".join(doc.split()), 88, initial_indent="      ",
                                           subsequent_indent="      "))
    return "\n".join(lines)


def build_parser(full_help: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlarl", description="RL fine-tuning of vision-language-action policies "
        "(transformers + peft + accelerate + ManiSkill3).")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, help_ in HELP.items():
        # ``help`` is %-formatted by argparse (hence ``%%``), ``description`` is printed as is
        p = sub.add_parser(name, help=help_, description=help_.replace("%%", "%"),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=_options_epilog(SECTIONS[name]) if full_help else None)
        if SECTIONS[name]:
            p.add_argument("--config", help="YAML recipe (see recipes/)", default=None)
        if name == "eval":  # the report directory is --eval.out
            p.add_argument("checkpoints", nargs="*", help="checkpoint directories (default: --policy.path)")
        if name == "compare":
            p.add_argument("reports", nargs="+", help="report.json files or their directories; "
                           "the first report's first checkpoint is the baseline")
            p.add_argument("--json", default=None, help="also write the comparison to this file")
            p.add_argument("--baseline", default=None,
                           help="label or path of the baseline checkpoint (default: the first)")
        if name == "distill":  # the teacher is --distill.teacher
            p.add_argument("--student", help="student policy name (default mlp_student)",
                           default=None)
        if name == "quickstart":
            p.add_argument("--smoke", action="store_true", help="tiny version (<= 3 min)")
            p.add_argument("--run-dir", default=None, help="where stage outputs are cached")
            p.add_argument("--force", action="store_true", help="recompute every stage")
        if name == "bench":
            p.add_argument("parts", nargs="*",
                           default=["env", "policy", "loop", "pipeline", "contention", "workers"],
                           help="parts to run: env, policy, loop, pipeline, contention, workers (default all)")
            p.add_argument("--json", default=None, help="write the figures to this JSON file")
            p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
        if name == "demo":
            p.add_argument("--steps", type=int, default=None,
                           help="decisions to step (default: until every env's episode ended)")
    return parser


RENAMED = {"--out": "--eval.out", "--teacher": "--distill.teacher"}
"""Flags that duplicated a config field; each option has one spelling (the field's)."""


def _check_renamed(argv: list[str]) -> None:
    from vlarl.config import ConfigError

    for tok in argv:
        flag = tok.split("=", 1)[0]
        if flag in RENAMED:
            raise ConfigError(f"{flag} is spelled {RENAMED[flag]} (the config field it sets; "
                              f"every option has one spelling)")


def _load(args, rest: list[str]):
    from vlarl.config import load_config

    # each command validates the sections it reads (SECTIONS), and the checks between them
    return load_config(getattr(args, "config", None), rest, sections=SECTIONS[args.command])


FORWARDED = {"drift": "vlarl.eval.drift", "rldg": "vlarl.methods.rldg"}
"""Commands whose module parses its own arguments (positional inputs, a sub-command)."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from vlarl.runtime.threads import configure_threads

    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:  # before torch is imported: OMP_NUM_THREADS, see vlarl/runtime/threads.py
        configure_threads(command)
    except ValueError as err:
        print(f"vlarl: error: {err}", file=sys.stderr)
        return 2
    if argv and argv[0] in FORWARDED:
        import importlib

        return importlib.import_module(FORWARDED[argv[0]]).main(argv[1:])
    full_help = any(a in ("-h", "--help") for a in argv[1:])  # subcommand help: list fields
    parser = build_parser(full_help)
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from vlarl.config import ConfigError

    try:
        if args.command in ("eval", "diagnose", "distill"):
            _check_renamed(argv)
        return _dispatch(args, rest, parser)
    except ConfigError as err:
        print(f"vlarl {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        # bad input named by the layer that found it (missing checkpoint, unknown task/split...);
        # VLARL_DEBUG=1 shows the traceback
        import os

        if os.environ.get("VLARL_DEBUG"):
            raise
        print(f"vlarl {args.command}: error: {err}", file=sys.stderr)
        return 2


def _dispatch(args, rest: list[str], parser) -> int:
    cmd = args.command
    if cmd == "doctor":
        from vlarl.tools.doctor import run_doctor

        return run_doctor()
    if cmd == "bench":
        from vlarl.tools.bench import run_bench

        run_bench(args.parts, json_path=args.json, quick=args.quick, extra=rest)
        return 0
    if cmd == "compare":
        import json

        from vlarl.eval.compare import compare_reports, comparison_table

        result = compare_reports(args.reports, baseline=args.baseline)
        print(comparison_table(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    if cmd == "quickstart":
        from vlarl.methods.quickstart import run_quickstart

        run_quickstart(smoke=args.smoke, run_dir=args.run_dir, force=args.force, extra=rest)
        return 0
    cfg = _load(args, rest)
    if cmd == "demo":
        from vlarl.tools.demo import run_demo

        run_demo(cfg, steps=args.steps)
    elif cmd == "expert":
        from vlarl.tools.demo import run_expert

        run_expert(cfg)
    elif cmd == "collect":
        from vlarl.data import collect_demos

        print(collect_demos(cfg))
    elif cmd == "sft":
        from vlarl.methods.sft import describe, run_sft

        out = run_sft(cfg)
        print(describe(out), file=sys.stderr)
        print(out)
    elif cmd == "train":
        from vlarl.runtime.preflight import preflight

        preflight(cfg)  # bad input and a held run dir are refused before torch is imported
        from vlarl.trainer import train

        print(train(cfg))
    elif cmd == "ire":
        from vlarl.methods.ire import run_ire

        print(run_ire(cfg))
    elif cmd == "eval":
        from vlarl.eval.evaluate import run_eval

        ckpts = args.checkpoints or ([cfg.policy.path] if cfg.policy.path else [])
        if not ckpts:
            from vlarl.config import ConfigError

            raise ConfigError("no checkpoint given: pass directories or --policy.path")
        run_eval(ckpts, cfg, cfg.eval.out)
    elif cmd == "diagnose":
        from vlarl.eval.diagnose import run_diagnose

        run_diagnose(cfg, cfg.eval.out)
    elif cmd == "distill":
        from vlarl.methods.distill import run_distill

        print(run_distill(cfg, student=args.student))
    return 0


if __name__ == "__main__":
    sys.exit(main())
