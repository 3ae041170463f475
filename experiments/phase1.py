"""Build (or reuse) the dataset and the Phase 1 checkpoint for a config's regime.

    python experiments/phase1.py --config slot3.yaml
"""

from metabolism.cli import QUICK_NOTICE, parse_config_args, run_main


def main() -> None:
    args, cfg = parse_config_args(__doc__)
    from metabolism.experiment import ensure_phase1  # torch: after --help

    path, info = ensure_phase1(cfg, args.data_root, progress=not args.no_progress,
                               rebuild=not args.no_rebuild)
    print(f"phase 1 checkpoint: {path}")
    print(f"rate_constants_R2: {info['rate_constants_R2']:.4f} "
          f"(trained in {info['seconds']:.0f} s)")
    if args.quick:
        print(QUICK_NOTICE)


if __name__ == "__main__":
    run_main(main)
