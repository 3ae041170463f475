"""One Phase 2 run: builds the dataset and Phase 1 checkpoint if missing, trains MLP_node and
the embeddings, writes analysis.log + plots + checkpoint, and logs everything to MLflow.

    python experiments/phase2.py --config slot3.yaml
    python experiments/phase2.py --config slot0 -o training.data_augmentation_loop=2000
    python experiments/phase2.py --quick          # tiny regime, whole pipeline in seconds
"""

from metabolism.cli import parse_config_args, run_main
from metabolism.experiment import run_phase2


def main() -> None:
    args, cfg = parse_config_args(__doc__)
    run_phase2(cfg, runs_root=args.runs_root, data_root=args.data_root,
               progress=not args.no_progress, rebuild=not args.no_rebuild)


if __name__ == "__main__":
    run_main(main)
