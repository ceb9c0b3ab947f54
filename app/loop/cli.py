"""`ftstudio loop`: the continuous fine-tuning loop from a terminal (what the Export tab's panel does).

    ftstudio loop policy --model_name assistant --min_new_rows 20 --eval_dataset my_heldout   create / edit
    ftstudio loop status [--json]          served version, feedback counts, trigger, history
    ftstudio loop run-once [--force]       one check: train, evaluate, promote or not (progress on stderr)
    ftstudio loop rollback VERSION         serve an earlier version again
An API server started with `ftstudio api --loop runs/loop/policy.yaml` picks up promotions and rollbacks.
Imports stay light here: `app.cli` imports this module for every command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from app.config.loop import LoopPolicy


def add_loop_parser(sub: Any) -> None:
    loop = sub.add_parser("loop", help="continuous fine-tuning from feedback: policy, status, run-once, rollback")
    commands = loop.add_subparsers(dest="loop_command", required=True)
    runs = {"default": os.environ.get("FTSTUDIO_RUNS", "runs"), "help": "runs folder (the loop lives in its loop/)"}

    policy = commands.add_parser("policy", help="create or change the policy (runs/loop/policy.yaml)",
                                 description="Fields not given keep their saved value (or the default).")
    policy.add_argument("--runs-dir", **runs)
    for name, f in LoopPolicy.spec().items():
        choices = [str(c) for c in f.metadata["choices"]] if f.metadata["choices"] else None
        policy.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS,
                            metavar="{" + ",".join(choices) + "}" if choices else name.split("_")[-1].upper(),
                            help=f"{f.metadata['help']} (default: {f.default})")
    policy.set_defaults(func=cmd_policy)

    status = commands.add_parser("status", help="served version, feedback counts, trigger and history")
    status.add_argument("--runs-dir", **runs)
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(func=cmd_status)

    once = commands.add_parser("run-once", help="check now: train, evaluate and promote when due")
    once.add_argument("--runs-dir", **runs)
    once.add_argument("--force", action="store_true", help="train even with fewer new rows than min_new_rows")
    once.set_defaults(func=cmd_run_once)

    back = commands.add_parser("rollback", help="serve an earlier version again (no restart)")
    back.add_argument("version", type=int, help="version number (see `ftstudio loop status`)")
    back.add_argument("--runs-dir", **runs)
    back.set_defaults(func=cmd_rollback)


def _controller(args: argparse.Namespace) -> Any:
    from app.loop.controller import LoopController

    return LoopController(args.runs_dir)


def cmd_policy(args: argparse.Namespace) -> int:
    from app.config.schema import read_yaml_mapping

    controller = _controller(args)
    data = read_yaml_mapping(controller.policy_path) if controller.policy_path.is_file() else {}
    data.update({k: v for k, v in vars(args).items() if k in LoopPolicy.spec()})
    policy = LoopPolicy.from_dict(data).resolved(Path.cwd())  # ConfigError: the CLI lists the problems
    path = controller.save_policy(policy)
    print(policy.to_yaml(), end="")
    print(f"saved {path}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from app.loop.history import LoopError
    from app.loop.report import COLUMNS, history_rows, status_lines

    try:
        status = _controller(args).status()
    except LoopError as exc:
        print(f"loop: {exc}", file=sys.stderr)
        return 1
    served = status.served.number if status.served else None
    if args.json:
        print(json.dumps({"policy": status.policy.to_dict() if status.policy else None, "served": served,
                          "counts": vars(status.counts), "feedback_set": status.feedback_set,
                          "new_rows": status.new_rows, "due": status.due, "activity": status.activity,
                          "history": status.history}, indent=2, ensure_ascii=False))
        return 0
    print("\n".join(status_lines(status)))
    rows = history_rows(status.history, served)
    if rows:
        widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(COLUMNS[:-1])]
        print()
        print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)) + "  note")
        for row in rows:
            print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) + f"  {row[-1]}")
    return 0


def cmd_run_once(args: argparse.Namespace) -> int:
    from app.loop.history import LoopError

    def say(message: str) -> None:
        print(f"loop: {message}", file=sys.stderr, flush=True)

    try:
        cycle = _controller(args).run_once(force=args.force, progress=say)
    except LoopError as exc:
        print(f"loop: {exc}", file=sys.stderr)
        return 1
    if cycle is None:
        print("not due: fewer new feedback rows than min_new_rows (--force trains anyway)")
        return 0
    print(json.dumps({"version": cycle.version, "promoted": cycle.promoted, "reason": cycle.reason},
                     ensure_ascii=False))
    return 0 if cycle.entry["kind"] == "candidate" else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from app.loop.history import LoopError

    try:
        version = _controller(args).rollback(args.version)
    except LoopError as exc:
        print(f"loop: {exc}", file=sys.stderr)
        return 1
    print(f"serving version {version.number} ({version.adapter or 'the base model'}); an API server following "
          "the loop swaps within a second")
    return 0
