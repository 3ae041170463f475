"""Build (or reuse) the dataset and the Phase 1 checkpoint for a config's regime.

    python experiments/phase1.py --config slot3.yaml
"""

import argparse

from metabolism.cli import add_config_args, config_from_args, run_main
from metabolism.experiment import ensure_phase1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    args = parser.parse_args()
    cfg = config_from_args(args)
    path, info = ensure_phase1(cfg, args.data_root, progress=not args.no_progress)
    print(f"phase 1 checkpoint: {path}")
    print(f"rate_constants_R2: {info['rate_constants_R2']:.4f} "
          f"(trained in {info['seconds']:.0f} s)")


if __name__ == "__main__":
    run_main(main)
