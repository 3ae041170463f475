"""Run (or resume) an exploration study: a UCB tree over Phase 2 configs, slots in parallel.

    python experiments/explore.py --study s1 --iterations 48 --block-size 12
    python experiments/explore.py --study s1 --iterations 48 --block-size 12 \\
        --agent-command "my-agent --model x" --override training.data_augmentation_loop=200
    python experiments/explore.py --study s1 ... --backend ray --address auto

Everything goes to studies/<study>/: tree.json (the source of truth), <study>_analysis.md,
<study>_memory.md, ucb_scores.txt, tree.png, agent prompts/answers. Running the same command
again after a kill continues from the last completed iteration. The runner plug-in
(--runner module:function, or $METABOLISM_EXPLORE_RUNNER) performs one slot run; the default
is the real Phase 2 training (metabolism.experiment.run_phase2).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from metabolism.cli import (HelpFormatter, add_common_args, add_compute_args, compute_overrides,
                            run_main)
from metabolism.config import CONFIG_DIR, DEFAULT_EXPERIMENT, check_name, parse_override
from metabolism.explore.agent import AgentHook
from metabolism.explore.backends import BackendError, make_backend
from metabolism.explore.loop import ExplorationLoop, ExplorationSettings, load_base_configs
from metabolism.explore.runners import (DEFAULT_RUNNER, RUNNER_ENV, RunnerError, check_runner,
                                        export_run_options)

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--study", required=True, help="study name (folder under --studies-root)")
    p.add_argument("--iterations", type=int, required=True, help="total iterations (nodes)")
    p.add_argument("--block-size", type=int, required=True,
                   help="iterations per block (a multiple of the number of slots)")
    p.add_argument("--slots", type=int, nargs="+", default=[0, 1, 2, 3],
                   help="slots explored in parallel, one iteration each per round")
    p.add_argument("--ucb-c", type=float, default=1.0, help="UCB exploration constant c")
    p.add_argument("--backend", choices=["local", "ray", "inline"], default="local",
                   help="local process pool, a Ray cluster, or inline (one run at a time in "
                        "this process, for debugging)")
    p.add_argument("--address", help="Ray cluster address ('auto', 'ray://host:10001', 'local')")
    p.add_argument("--workers", type=int, help="local backend: max parallel runs (<= 4, CPUs)")
    p.add_argument("--agent-command", help="command that answers a prompt with a mutation")
    p.add_argument("--agent-timeout", type=float, default=600.0,
                   help="seconds the agent may take to answer")
    p.add_argument("--instructions", type=Path,
                   help="seed instructions for the agent (default: the repository's "
                        "docs/seed/phase2_homeostasis_instructions.txt)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to every slot's base config (e.g. a tiny regime)")
    p.add_argument("--config-dir", type=Path, default=CONFIG_DIR,
                   help="folder with slot0.yaml..slot3.yaml")
    p.add_argument("--studies-root", type=Path, default=REPO_ROOT / "studies")
    p.add_argument("--runner", default=os.environ.get(RUNNER_ENV, DEFAULT_RUNNER),
                   help=f"module:function performing one run (default {DEFAULT_RUNNER})")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the study to MLflow")
    add_common_args(p)
    add_compute_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_name(args.study, "--study")  # before any path is built from it
        check_runner(args.runner)
        # parallel runs draw no bars (they would garble each other); the loop prints a line
        # per round and per finished iteration instead
        run_options = export_run_options(data_root=args.data_root, runs_root=args.runs_root,
                                         progress=not args.no_progress and args.backend == "inline")
        given = dict(parse_override(o) for o in args.override)  # a resume must repeat them
        overrides = {**compute_overrides(args), **given}
        study_dir = args.studies_root / args.study
        base = {} if (study_dir / "tree.json").exists() else load_base_configs(
            args.slots, args.config_dir, overrides)
        experiment = next(iter(base.values()))["tracking"]["experiment"] if base else \
            DEFAULT_EXPERIMENT
        settings = ExplorationSettings(study=args.study, iterations=args.iterations,
                                       block_size=args.block_size, slots=args.slots,
                                       ucb_c=args.ucb_c, base_configs=base,
                                       experiment=experiment, track=not args.no_mlflow,
                                       overrides=given)
        settings.validate()
        ray_env = None
        if args.backend == "ray":  # Ray workers inherit no environment: hand them the run
            from metabolism.tracking import tracking_uri  # options and the driver's store

            ray_env = {"env_vars": {**run_options, "MLFLOW_TRACKING_URI": tracking_uri()}}
        backend = make_backend(args.backend, args.address, args.workers, runtime_env=ray_env)
        agent = AgentHook(args.agent_command, args.agent_timeout) if args.agent_command else None
        study = ExplorationLoop(settings, study_dir, runner=args.runner, backend=backend,
                                agent=agent, instructions=args.instructions)
    except (ValueError, BackendError, RunnerError, OSError) as exc:
        # ValueError covers ConfigError, ExplorationError and an unreadable tree.json
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        study.run()
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    run_main(main)
