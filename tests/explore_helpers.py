"""Shared builders for the exploration tests: base configs and in-process studies."""

from __future__ import annotations

from pathlib import Path

import yaml

from metabolism.config import SLOT_TIME_STEPS, config_from_dict
from metabolism.explore.backends import InlineBackend
from metabolism.explore.loop import ExplorationLoop, ExplorationSettings
from metabolism.explore.tree import Node

SYNTHETIC = "metabolism.explore.runners:synthetic_runner"


def base_configs(slots=(0, 1, 2, 3)) -> dict[int, dict]:
    return {s: config_from_dict({"slot": s, "training": {
        "homeostasis_time_step": SLOT_TIME_STEPS[s]}}).to_dict() for s in slots}


def write_slot_yamls(folder: Path, slots=(0, 1, 2, 3)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in slots:
        (folder / f"slot{s}.yaml").write_text(yaml.safe_dump(
            {"slot": s, "training": {"homeostasis_time_step": SLOT_TIME_STEPS[s]}}))
    return folder


def make_study(tmp_path: Path, iterations=8, block_size=4, slots=(0, 1, 2, 3),
               runner=SYNTHETIC, agent=None, track=False, study="t", ucb_c=1.0,
               backend=None, plot=False) -> ExplorationLoop:
    settings = ExplorationSettings(study=study, iterations=iterations, block_size=block_size,
                                   slots=list(slots), ucb_c=ucb_c,
                                   base_configs=base_configs(slots), track=track)
    return ExplorationLoop(settings, tmp_path / study, runner=runner,
                           backend=backend or InlineBackend(), agent=agent,
                           log=lambda line: None, plot=plot)


def node(id, parent, reward, slot=0, block=0, metrics=None, error=None, status="partial"):
    n = Node(id=id, parent=parent, slot=slot, block=block, round=0,
             config=base_configs((slot,))[slot], metrics=metrics or {}, error=error,
             status=status)
    n.reward = reward
    return n


def plotting_runner(cfg, parent_run_id, extra_tags):
    """Synthetic run that also reports (empty) plot files, like run_phase2's `plots`."""
    import os

    from metabolism.explore.runners import synthetic_runner

    result = synthetic_runner(cfg, parent_run_id, extra_tags)
    folder = Path(os.environ["EXPLORE_TEST_PLOTS"]) / f"node{extra_tags['node_id']}"
    folder.mkdir(parents=True, exist_ok=True)
    result.plots = {"mlp_node": folder / "MLP_node_p2_100.png",
                    "embedding": folder / "embedding_p2_100.png"}
    for p in result.plots.values():
        p.write_bytes(b"")
    return result


def dying_runner(cfg, parent_run_id, extra_tags):
    """The worker process dies mid-run (as if killed or out of memory)."""
    import os

    os._exit(1)
