"""Typed config: one-line ConfigErrors that name the key, frozen regime, slot configs, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metabolism.config import (CONFIG_DIR, SLOT_TIME_STEPS, Config, ConfigError,
                               config_from_dict, load_config, parse_override,
                               resolve_config_path)

ROOT = Path(__file__).resolve().parent.parent


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as ei:
        config_from_dict(data)
    msg = str(ei.value)
    assert "\n" not in msg, f"error must be one line: {msg!r}"
    return msg


def _write(tmp_path: Path, data: dict | str, name="cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


# ----------------------------------------------------------------------------- typing


def test_defaults_are_valid_and_default_regime():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config)
    assert cfg.regime == "default"
    assert cfg.simulation.n_metabolites == 100 and cfg.simulation.n_reactions == 256
    assert cfg.simulation.n_metabolite_types == 2 and cfg.simulation.cycle_length == 3
    assert cfg.simulation.lambda_per_type == [0.001, 0.002]
    assert cfg.simulation.baseline_per_type == [4.0, 6.0]
    assert cfg.simulation.delta_t == 0.1 and cfg.simulation.n_frames == 2880
    assert cfg.simulation.seed == 42
    assert cfg.evaluation.cluster_distance_threshold == 0.1
    assert cfg.evaluation.dbscan_min_samples == 5 and cfg.evaluation.n_sweep_points == 50


@pytest.mark.parametrize("data,key", [
    ({"training": {"bogus": 1}}, "training.bogus"),
    ({"bogus_section": {}}, "bogus_section"),
    ({"training": {"strategies": {"amplification": {"facter": 3}}}},
     "training.strategies.amplification.facter"),
    ({"simulation": {"n_metabolite": 10}, "regime": "x"}, "simulation.n_metabolite"),
])
def test_unknown_key(data, key):
    msg = _err(data)
    assert msg.startswith(key + ":")
    assert "unknown key" in msg


@pytest.mark.parametrize("data,key", [
    ({"training": {"batch_size": "eight"}}, "training.batch_size"),
    ({"training": {"batch_size": 8.5}}, "training.batch_size"),
    ({"training": {"batch_size": True}}, "training.batch_size"),
    ({"training": {"learning_rate_node_homeostasis": "fast"}},
     "training.learning_rate_node_homeostasis"),
    ({"training": {"freeze_stoichiometry": "yes"}}, "training.freeze_stoichiometry"),
    ({"training": {"strategies": {"multiscale": {"fractions": 0.5}}}},
     "training.strategies.multiscale.fractions"),
    ({"training": {"strategies": {"multiscale": {"fractions": [0.5, "x"]}}}},
     "training.strategies.multiscale.fractions[1]"),
    ({"training": 5}, "training"),
    ({"tracking": {"experiment": 3}}, "tracking.experiment"),
])
def test_wrong_type(data, key):
    msg = _err(data)
    assert msg.startswith(key + ":"), msg


def test_float_from_yaml_string():
    # YAML 1.1 reads 1e-2 (no dot) as a string; it must still be a float
    data = yaml.safe_load("training:\n  learning_rate_node_homeostasis: 1e-2\n")
    cfg = config_from_dict(data)
    assert cfg.training.learning_rate_node_homeostasis == 0.01


@pytest.mark.parametrize("data,key", [
    ({"training": {"batch_size": 0}}, "training.batch_size"),
    ({"training": {"data_augmentation_loop": 0}}, "training.data_augmentation_loop"),
    ({"training": {"learning_rate_embedding_homeostasis": -1.0}},
     "training.learning_rate_embedding_homeostasis"),
    ({"regime": "x", "simulation": {"lambda_per_type": [0.1]}}, "simulation.lambda_per_type"),
    ({"regime": "x", "simulation": {"n_metabolite_types": 3}}, "simulation.lambda_per_type"),
    ({"training": {"strategies": {"residual_supervision": {"target": "truth"}}}},
     "training.strategies.residual_supervision.target"),
    ({"training": {"strategies": {"residual_supervision": {"conserved_law_offsets": "type"}}}},
     "training.strategies.residual_supervision.conserved_law_offsets"),
    ({"training": {"strategies": {"residual_supervision": {"target": "conserved_law"},
                                  "contrastive": {"init_from_data": 0.5}}}},
     "training.strategies.contrastive.init_from_data"),
    ({"regime": "x", "simulation": {"type_assignment": "shuffled"}},
     "simulation.type_assignment"),
    ({"regime": "x", "simulation": {"type_proportions": [0.7]}}, "simulation.type_proportions"),
    ({"regime": "x", "simulation": {"type_proportions": [0.7, -0.3]}},
     "simulation.type_proportions"),
    ({"regime": "x", "simulation": {"type_proportions": [0.999, 0.001]}},
     "simulation.type_proportions"),
    ({"training": {"strategies": {"multiscale": {"fractions": [0.0, 1.0]}}}},
     "training.strategies.multiscale.fractions"),
    ({"training": {"strategies": {"residual_supervision": {"loss": "l1"}}}},
     "training.strategies.residual_supervision.loss"),
    ({"training": {"strategies": {"residual_supervision": {"huber_scale": 0.0}}}},
     "training.strategies.residual_supervision.huber_scale"),
    ({"training": {"strategies": {"contrastive": {"mode": "atract"}}}},
     "training.strategies.contrastive.mode"),
    ({"training": {"strategies": {"contrastive": {"neighbours_from": "labels"}}}},
     "training.strategies.contrastive.neighbours_from"),
    ({"training": {"strategies": {"contrastive": {"grid_quantiles": [0.8, 0.2]}}}},
     "training.strategies.contrastive.grid_quantiles"),
    ({"training": {"strategies": {"contrastive": {"grid_quantiles": [0.5]}}}},
     "training.strategies.contrastive.grid_quantiles"),
    ({"training": {"strategies": {"contrastive": {"reassign_at": [0.5, 1.0]}}}},
     "training.strategies.contrastive.reassign_at"),
    ({"training": {"strategies": {"contrastive": {"reassign_neighbours": 0}}}},
     "training.strategies.contrastive.reassign_neighbours"),
    ({"training": {"strategies": {"lr_schedule": {"warmup_fraction": 1.0}}}},
     "training.strategies.lr_schedule.warmup_fraction"),
    ({"training": {"strategies": {"lr_schedule": {"min_factor": 0.0}}}},
     "training.strategies.lr_schedule.min_factor"),
    ({"training": {"strategies": {"lr_schedule": {"peak_factor": -1.0}}}},
     "training.strategies.lr_schedule.peak_factor"),
    ({"training": {"node_output_scale": "data"}}, "training.node_output_scale"),
    ({"training": {"strategies": {"contrastive": {"reassign_from": "data"}}}},
     "training.strategies.contrastive.reassign_from"),
    ({"training": {"strategies": {"contrastive": {"reassign_from": "both"}}}},
     "training.strategies.contrastive.reassign_from"),
])
def test_range_checks(data, key):
    assert _err(data).startswith(key + ":")


# ----------------------------------------------------------------------------- Phase 2 rules


@pytest.mark.parametrize("slot,wrong", [(0, 16), (1, 4), (2, 64), (3, 32)])
def test_slot_time_step_fixed(slot, wrong):
    msg = _err({"slot": slot, "training": {"homeostasis_time_step": wrong}})
    assert msg.startswith("training.homeostasis_time_step:")
    assert str(SLOT_TIME_STEPS[slot]) in msg


def test_slot_time_step_fixed_in_other_regime_too():
    msg = _err({"regime": "mine", "slot": 0, "training": {"homeostasis_time_step": 16}})
    assert msg.startswith("training.homeostasis_time_step:")


def test_unknown_slot():
    assert _err({"slot": 7}).startswith("slot:")


@pytest.mark.parametrize("key,value", [
    ("simulation.n_reactions", 100), ("simulation.seed", 1), ("simulation.delta_t", 0.05),
    ("simulation.lambda_per_type", [0.01, 0.02]), ("phase1.n_steps", 10),
    ("phase1.learning_rate_sub", 0.1), ("model.hidden_dim_node", 8), ("model.embedding_dim", 3),
])
def test_frozen_regime(key, value):
    section, name = key.split(".")
    msg = _err({"slot": 3, "training": {"homeostasis_time_step": 64}, section: {name: value}})
    assert msg.startswith(key + ":")
    assert "frozen" in msg and "regime" in msg
    # the same change is fine in a regime with another name
    cfg = config_from_dict({"regime": "study", section: {name: value}})
    assert getattr(getattr(cfg, section), name) == value


def test_frozen_regime_explicit_default_values_are_fine():
    from metabolism.config import Phase1Config
    cfg = config_from_dict({"regime": "default", "simulation": {"n_reactions": 256},
                            "model": {"hidden_dim_node": 64},
                            "phase1": {"n_steps": Phase1Config().n_steps}})
    assert cfg.simulation.n_reactions == 256


@pytest.mark.parametrize("flag", ["freeze_stoichiometry", "skip_phase1", "homeostasis_training"])
def test_freeze_flags_must_be_true(flag):
    msg = _err({"training": {flag: False}})
    assert msg.startswith(f"training.{flag}:")
    msg = _err({"regime": "other", "training": {flag: False}})
    assert msg.startswith(f"training.{flag}:")


def test_non_default_regime_may_change_simulation():
    cfg = config_from_dict({"regime": "small", "simulation": {
        "n_metabolites": 30, "n_reactions": 50, "n_metabolite_types": 3,
        "lambda_per_type": [0.1, 0.2, 0.3], "baseline_per_type": [1, 2, 3]}})
    assert cfg.simulation.n_metabolites == 30
    assert cfg.simulation.baseline_per_type == [1.0, 2.0, 3.0]
    assert all(isinstance(x, float) for x in cfg.simulation.baseline_per_type)


def test_hash_changes_with_simulation_only():
    a = config_from_dict({"regime": "r"})
    b = config_from_dict({"regime": "r", "simulation": {"seed": 1}})
    c = config_from_dict({"regime": "r", "training": {"batch_size": 4}})
    assert a.hash_of("simulation") != b.hash_of("simulation")
    assert a.hash_of("simulation") == c.hash_of("simulation")
    assert a.hash_of("simulation") == config_from_dict({"regime": "r"}).hash_of("simulation")


def test_default_regime_cache_keys_unchanged():
    """The keys of the default regime's dataset and Phase 1 checkpoint: a new simulation key at
    its default must not orphan the caches (and studies) built before it existed."""
    cfg = config_from_dict({})
    assert cfg.hash_of("simulation") == "dda271e07c39"
    from metabolism.experiment import phase1_checkpoint_path

    assert phase1_checkpoint_path(cfg, Path("data")).name == "phase1-e40531e15873.pt"


@pytest.mark.parametrize("key,value", [("type_assignment", "random"),
                                       ("type_proportions", [0.7, 0.3])])
def test_type_keys_enter_the_hash_when_set(key, value):
    a = config_from_dict({"regime": "r"})
    b = config_from_dict({"regime": "r", "simulation": {key: value}})
    assert a.hash_of("simulation") != b.hash_of("simulation")


def test_default_regime_rejects_random_types():
    assert _err({"simulation": {"type_assignment": "random"}}).startswith(
        "simulation.type_assignment:")


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("slot", [0, 1, 2, 3])
def test_seed_baseline_slot_configs(slot):
    """The seed's baseline, kept for comparison under configs/seed_baseline/."""
    cfg = load_config(f"seed_baseline/slot{slot}.yaml")
    assert cfg.slot == slot
    assert cfg.regime == "default"
    assert cfg.training.homeostasis_time_step == {0: 4, 1: 16, 2: 32, 3: 64}[slot]
    tr = cfg.training
    assert tr.learning_rate_node_homeostasis == 1e-2
    assert tr.learning_rate_embedding_homeostasis == 1e-3
    assert tr.data_augmentation_loop == 1000
    assert tr.batch_size == 8
    assert tr.freeze_stoichiometry and tr.skip_phase1 and tr.homeostasis_training
    assert cfg.training.strategies.enabled_names() == []
    assert cfg.source.endswith(f"seed_baseline/slot{slot}.yaml")


@pytest.mark.parametrize("slot", [0, 1, 2, 3])
def test_default_slot_configs(slot):
    """The default slot configs: the fixed time step, robust residual supervision (by the
    conserved-law lines where the data give them) and the contrastive embedding loss on the
    data's central concentration range with one reassignment
    of the embeddings by fit and data over 30 neighbours, MLP_node's output in the residual's
    units, a cosine decay of the learning rates without warmup; the long-rollout slots also
    stop the gradient through the reaction term."""
    cfg = load_config(f"slot{slot}.yaml")
    assert cfg.slot == slot and cfg.regime == "default"
    assert cfg.training.homeostasis_time_step == {0: 4, 1: 16, 2: 32, 3: 64}[slot]
    st = cfg.training.strategies
    expected = ["residual_supervision", "contrastive", "lr_schedule"]
    if slot >= 2:
        expected.append("gradient_isolation")
    assert st.enabled_names() == expected
    assert st.residual_supervision.loss == "huber"
    assert (st.residual_supervision.target,
            st.residual_supervision.conserved_law_offsets) == ("conserved_law", "slope_group")
    assert st.contrastive.grid_quantiles == [0.25, 0.75]
    assert st.contrastive.reassign_at == [0.8]
    assert (st.contrastive.neighbours_from, st.contrastive.reassign_from,
            st.contrastive.reassign_neighbours) == ("both", "both", 30)
    assert cfg.training.node_output_scale == "residual"
    assert (st.lr_schedule.warmup_fraction, st.lr_schedule.peak_factor,
            st.lr_schedule.min_factor) == (0.0, 1.0, 0.05)
    assert 4 <= cfg.training.batch_size <= 32
    assert 100 <= cfg.training.data_augmentation_loop <= 5000


@pytest.mark.parametrize("name", ["slot3", "slot3.yaml"])
def test_bare_name_lookup(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing called slot3 here
    assert resolve_config_path(name) == CONFIG_DIR / "slot3.yaml"
    assert load_config(name).slot == 3


def test_existing_path_wins(tmp_path):
    p = _write(tmp_path, {"regime": "x", "training": {"batch_size": 5}}, "slot3.yaml")
    assert load_config(p).training.batch_size == 5


def test_missing_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as ei:
        load_config("nope.yaml")
    assert "nope.yaml" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "sub" / "missing.yaml")
    assert "missing.yaml" in str(ei.value)


def test_malformed_yaml_names_file(tmp_path):
    p = _write(tmp_path, "training:\n  batch_size: [1, 2\n  seed: 3\n", "broken.yaml")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "broken.yaml" in msg and "YAML" in msg and "\n" not in msg


def test_top_level_not_mapping(tmp_path):
    p = _write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "list.yaml" in str(ei.value)


def test_error_in_file_names_key(tmp_path):
    p = _write(tmp_path, {"slot": 3, "training": {"homeostasis_time_step": 64,
                                                  "batch_size": "eight"}})
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value).startswith("training.batch_size:")


def test_overrides():
    cfg = load_config("slot0", {"training.batch_size": 4, "training.seed": 3})
    assert cfg.training.batch_size == 4 and cfg.training.seed == 3
    with pytest.raises(ConfigError) as ei:
        load_config("slot0", {"training.homeostasis_time_step": 16})
    assert str(ei.value).startswith("training.homeostasis_time_step:")
    assert parse_override("training.batch_size=4") == ("training.batch_size", 4)
    assert parse_override("training.strategies.multiscale.fractions=[0.5, 1]") == (
        "training.strategies.multiscale.fractions", [0.5, 1])
    with pytest.raises(ConfigError):
        parse_override("training.batch_size")


def test_flat_has_dotted_keys_round_trip():
    cfg = load_config("slot2")
    flat = cfg.flat()
    assert flat["training.homeostasis_time_step"] == 32
    assert flat["training.strategies.amplification.factor"] == 50.0
    assert "source" not in flat
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again.flat() == flat


# ----------------------------------------------------------------------------- CLI


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/m.db"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "phase2.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_missing_config(tmp_path):
    out = _cli("--config", "nope.yaml", cwd=tmp_path)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "nope.yaml" in lines[0]
    assert "Traceback" not in out.stderr


def test_cli_bad_override(tmp_path):
    out = _cli("--config", "slot0", "-o", "training.homeostasis_time_step=16", cwd=tmp_path)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "training.homeostasis_time_step" in lines[0]


def test_every_named_regime_file_loads_for_every_slot():
    """experiments/configs/regimes/*.yaml are what the README's studies ran: each must give a
    valid config for all four slot files, and a regime name other than the frozen default."""
    import yaml

    from metabolism.config import flatten, load_config

    cfg_dir = ROOT / "experiments" / "configs"
    files = sorted((cfg_dir / "regimes").glob("*.yaml"))
    assert {f.stem for f in files} >= {"phase1_short", "phase1_1200", "sim_seed_7",
                                       "four_types", "unequal_groups", "weak_laws", "phase1_hard"}
    for f in files:
        over = flatten(yaml.safe_load(f.read_text()))
        assert over["regime"] == f.stem, f
        # off the default regime, a metabolite's index must say nothing of its type (the
        # observation-noise regimes keep the default network as it is measured in docs/)
        if not f.stem.startswith(("noise_", "sparse_")):
            assert over["simulation.type_assignment"] == "random", f
        for s in range(4):
            cfg = load_config(cfg_dir / f"slot{s}.yaml", over)
            assert cfg.regime == f.stem
