"""Shared command-line plumbing for experiments/*.py: config flags and one-line errors.

Kept light (no torch, mlflow or matplotlib at import) so every script's --help answers at once;
the scripts import the heavy modules inside main().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metabolism.config import (DEFAULT_EXPERIMENT, Config, ConfigError, RolloutBackend, choices,
                               load_config, parse_override)

QUICK_EXPERIMENT = f"{DEFAULT_EXPERIMENT}_quick"

# A tiny regime for smoke tests and `--quick`: every stage runs, in seconds.
QUICK_OVERRIDES = {
    "regime": "quick",
    "simulation.n_metabolites": 20,
    "simulation.n_reactions": 40,
    "simulation.n_frames": 300,
    "model.hidden_dim_sub": 16,
    "model.hidden_dim_node": 16,
    "phase1.n_steps": 20,
    "phase1.max_steps": 0,  # a smoke test: its 20-step Phase 1 is never trusted
    "phase1.n_restarts": 1,
    "phase1.restart_trial_steps": 5,
    "phase1.batch_size": 64,
    "training.data_augmentation_loop": 6,
    "training.batch_size": 4,
    "training.plot_every": 6,  # one evaluation, at the end
}
QUICK_MAX_TIME_STEP = 8
QUICK_NOTICE = ("--quick: a smoke test on a tiny regime with a few updates; its numbers say "
                "nothing about the method (run without --quick for real results)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The flags every script shares: where data, runs and progress go."""
    p.add_argument("--data-root", type=Path, default=Path("data"),
                   help="cached datasets and Phase 1 checkpoints")
    p.add_argument("--runs-root", type=Path, default=Path("runs"),
                   help="run folders (analysis.log, plots, checkpoints)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_compute_args(p: argparse.ArgumentParser) -> None:
    """--device, --threads, --rollout-backend: shortcuts for the config's compute section."""
    p.add_argument("--device", metavar="auto|cpu|cuda|cuda:N",
                   help="where runs compute (compute.device; auto = CUDA when available)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op CPU threads per run (compute.threads; 0 = torch's "
                        "default, every core)")
    p.add_argument("--rollout-backend", choices=list(choices(RolloutBackend)),
                   help="Phase 2 rollouts: auto (fused kernel on CUDA), torch, or triton "
                        "(compute.rollout_backend)")


def compute_overrides(args: argparse.Namespace) -> dict:
    """The compute flags given on the command line, as dotted overrides."""
    pairs = (("compute.device", args.device), ("compute.threads", args.threads),
             ("compute.rollout_backend", args.rollout_backend))
    return {k: v for k, v in pairs if v is not None}


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="slot3.yaml",
                   help="YAML path, or a bare name looked up in experiments/configs/")
    p.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. training.batch_size=4 (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny regime, a few updates, its own MLflow experiment")
    add_common_args(p)
    add_compute_args(p)
    p.add_argument("--no-rebuild", action="store_true",
                   help="refuse (instead of rebuilding) a cached dataset or Phase 1 checkpoint "
                        "that fails its integrity check")


def parse_config_args(doc: str) -> tuple[argparse.Namespace, Config]:
    """The shared command line of experiments/phase1.py and phase2.py: args and the config."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    add_config_args(parser)
    args = parser.parse_args()
    return args, config_from_args(args)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict = {}
    if args.quick:  # keep the file's training section, shrink everything else
        base = load_config(args.config, {"regime": "quick"})
        overrides.update(QUICK_OVERRIDES)
        overrides["slot"] = None  # the slot's fixed time step is kept, capped for the tiny run
        overrides["training.homeostasis_time_step"] = min(base.training.homeostasis_time_step,
                                                          QUICK_MAX_TIME_STEP)
        overrides["tracking.experiment"] = QUICK_EXPERIMENT
    overrides.update(compute_overrides(args))
    for text in args.override:
        key, value = parse_override(text)
        overrides[key] = value
    return load_config(args.config, overrides)


def run_main(fn) -> None:
    """Run fn(); turn expected failures into one line on stderr and a non-zero exit.

    A non-zero int that fn returns is the process's exit status.
    """
    try:
        status = fn()
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (OSError, FloatingPointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a run (tracking.RunKilled)
        print(f"interrupted{f' ({exc})' if str(exc) else ''}; a run in progress ended KILLED",
              file=sys.stderr)
        sys.exit(130)
    if isinstance(status, int) and status:
        sys.exit(status)
