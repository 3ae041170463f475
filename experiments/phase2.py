"""One Phase 2 run: builds the dataset and Phase 1 checkpoint if missing, trains MLP_node and
the embeddings, writes analysis.log + plots + checkpoint, and logs everything to MLflow.

    python experiments/phase2.py --config slot3.yaml
    python experiments/phase2.py --config slot0 -o training.data_augmentation_loop=2000
    python experiments/phase2.py --quick          # smoke test: tiny regime, seconds
"""

from metabolism.cli import QUICK_NOTICE, parse_config_args, run_main


def main() -> None:
    args, cfg = parse_config_args(__doc__)
    from metabolism.experiment import run_phase2  # torch and mlflow: after --help

    if args.quick:
        print(QUICK_NOTICE, flush=True)
    run_phase2(cfg, runs_root=args.runs_root, data_root=args.data_root,
               progress=not args.no_progress, rebuild=not args.no_rebuild)
    if args.quick:
        print(QUICK_NOTICE)


if __name__ == "__main__":
    run_main(main)
