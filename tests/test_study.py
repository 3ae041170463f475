"""The study table: one row per run (failures kept), mean/spread and converged count per cell."""

from __future__ import annotations

import math

import pytest

from metabolism.config import load_config
from metabolism.study import VARIANTS, plan, summarize, write_report


@pytest.mark.parametrize("slot", [0, 1, 2, 3])
def test_every_variant_changes_every_slot_config(slot):
    """A variant that leaves a slot config as it is would make an ablation row a copy of the
    default row; each must load and differ (seed_baseline: no strategy left)."""
    default = load_config(f"slot{slot}.yaml")
    for name, overrides in VARIANTS.items():
        cfg = load_config(f"slot{slot}.yaml", overrides)
        if name == "default":
            assert cfg.flat() == default.flat()
            continue
        if name == "no_gradient_isolation" and slot < 2:
            continue  # slots 0 and 1 do not enable it
        assert cfg.flat() != default.flat(), name
    baseline = load_config(f"slot{slot}.yaml", VARIANTS["seed_baseline"])
    assert baseline.training.strategies.enabled_names() == []


def test_plan_crosses_variants_slots_and_seeds():
    cells = plan([0, 2], [0, 1], {"default": {}, "x": {"a.b": 1}}, {"regime": "r"})
    assert len(cells) == 8
    assert {(c.variant, c.slot, c.seed) for c in cells} == {
        (v, s, d) for v in ("default", "x") for s in (0, 2) for d in (0, 1)}
    assert all(c.overrides["training.seed"] == c.seed and c.overrides["regime"] == "r"
               for c in cells)


def test_summary_counts_converged_and_keeps_failures(tmp_path):
    rows = [
        {"slot": 0, "variant": "default", "seed": 0, "status": "FINISHED",
         "avg_slope_ratio": 1.0, "embedding_cluster_acc": 0.5},
        {"slot": 0, "variant": "default", "seed": 1, "status": "FINISHED",
         "avg_slope_ratio": 1.5, "embedding_cluster_acc": 0.7},
        {"slot": 0, "variant": "default", "seed": 2, "status": "FAILED", "error": "boom"},
    ]
    (s,) = summarize(rows)
    assert s["runs"] == 3 and s["failed"] == 1 and s["converged"] == "1/3"
    assert math.isclose(s["avg_slope_ratio_mean"], 1.25)
    assert math.isclose(s["embedding_cluster_acc_std"], 0.1)
    md, csv = write_report(rows, tmp_path, "t", ["header"])
    text = md.read_text()
    assert "FAILED" in text and "boom" in text and "1/3" in text
    assert csv.read_text().count("\n") == 4  # header + every run, the failed one included
