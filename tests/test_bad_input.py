"""Bad values, names and files: each is refused up front with one line naming it.

Every case here ran to completion (with a meaningless result), wrote outside its root, or
ended in a traceback before these checks existed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metabolism.config import ConfigError, parse_override
from metabolism.memory import check_fits
from conftest import tiny_config
from explore_helpers import SYNTHETIC, write_slot_yamls

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("key, value", [
    ("evaluation.n_sweep_points", 0),
    ("evaluation.n_sweep_points", 1),
    ("evaluation.dbscan_min_samples", 0),
    ("evaluation.cluster_distance_threshold", 0.0),
    ("training.plot_every", -1),
    ("training.rollout_loss_weight", -1.0),
    ("training.strategies.residual_supervision.weight", -0.5),
    ("training.strategies.contrastive.weight", -1.0),
    ("training.strategies.contrastive.n_grid", 1),
    ("training.strategies.contrastive.temperature", 0.0),
    ("training.strategies.contrastive.start_fraction", 1.5),
    ("training.strategies.curriculum.final_fraction", 0.0),
    ("training.strategies.amplification.factor", 0.0),
    ("training.strategies.amplification.anneal_start", -0.1),
    ("training.seed", -1),
    ("phase1.batch_size", 0),
    ("phase1.n_restarts", 0),
    ("phase1.learning_rate_sub", 0.0),
    ("phase1.drift_warmup_fraction", 1.0),
    ("phase1.window_segment", 0),
    ("model.hidden_dim_node", 0),
    ("model.embedding_init_std", -1.0),
    ("simulation.lambda_per_type", [0.001, -0.002]),
    ("simulation.lambda_per_type", [0.0, 0.002]),
    ("simulation.initial_concentration_range", [-1.0, 9.0]),
    ("simulation.seed", -3),
    ("training.learning_rate_node_homeostasis", float("nan")),
    ("simulation.delta_t", float("inf")),
])
def test_out_of_range_value_is_refused_naming_its_key(key, value):
    with pytest.raises(ConfigError) as exc:
        tiny_config(**{key: value})
    assert str(exc.value).startswith(key), str(exc.value)
    assert "\n" not in str(exc.value)


def test_impossible_network_size_is_refused_before_generation():
    """20 metabolites have 190 distinct substrate pairs, one per cycle reaction; the generator
    would otherwise fail deep inside with a RuntimeError (or first allocate S for 1e7)."""
    with pytest.raises(ConfigError, match=r"^simulation\.n_reactions: at most 190"):
        tiny_config(**{"simulation.n_reactions": 10_000_000})


def test_memory_estimate_refuses_a_batch_that_cannot_fit():
    with pytest.raises(ConfigError) as exc:
        tiny_config(**{"training.batch_size": 10 ** 9})
    msg = str(exc.value)
    assert msg.startswith("training.batch_size=1000000000") and "GiB" in msg, msg


def test_memory_estimate_names_keys_against_a_given_limit():
    cfg = tiny_config()
    check_fits(cfg, limit_bytes=1 << 40)  # fits in 1 TiB
    with pytest.raises(ConfigError, match=r"^training\.batch_size=4, .*: needs at least "
                                          r".* MiB \(phase 2 rollout graph\)"):
        check_fits(cfg, limit_bytes=1024)


def test_every_shipped_config_fits_and_passes_the_ranges():
    from metabolism.config import load_config
    for path in (ROOT / "experiments" / "configs").rglob("slot*.yaml"):
        load_config(path)


@pytest.mark.parametrize("key, value", [
    ("tracking.run_name", "../../../x"),
    ("tracking.run_name", "a/b"),
    ("tracking.run_name", ".hidden"),
    ("tracking.experiment", ".."),
    ("tracking.experiment", "/abs"),
    ("regime", "../up"),
])
def test_names_that_become_paths_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        tiny_config(**{key: value})


def test_plain_names_are_accepted():
    cfg = tiny_config(**{"tracking.run_name": "slot3-T64-a+b_s0.v2",
                         "tracking.experiment": "my_exp-1"})
    assert cfg.tracking.run_name == "slot3-T64-a+b_s0.v2"


@pytest.mark.parametrize("text, fragment", [
    ("training.batch_size=[", "not valid YAML"),
    ("training.batch_size={a: [}", "not valid YAML"),
    ("training.batch_size=!!python/object/apply:os.system ['echo hi']", "not valid YAML"),
    ("../x=1", "not a dotted key"),
    ("no_equals_sign", "section.key=value"),
])
def test_malformed_override_is_one_line(text, fragment):
    with pytest.raises(ConfigError) as exc:
        parse_override(text)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


# ------------------------------------------------------------------------- the CLIs


def _cli(script: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 120):
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db",
                **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args],
                          cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(res, *fragments: str) -> None:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_phase2_cli_python_tag_override_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    res = _cli("phase2.py", "--quick", "--data-root", str(tmp_path / "data"),
               "--override", f"training.batch_size=!!python/object/apply:os.system "
                             f"['touch {marker}']", cwd=tmp_path)
    _one_line_error(res, "--override", "training.batch_size")
    assert not marker.exists()
    assert not (tmp_path / "data").exists()  # refused before anything was built


def test_phase2_cli_run_name_outside_runs_root_is_refused(tmp_path):
    res = _cli("phase2.py", "--quick", "--runs-root", str(tmp_path / "runs"),
               "--data-root", str(tmp_path / "data"),
               "--override", "tracking.run_name=../../escaped", cwd=tmp_path)
    _one_line_error(res, "tracking.run_name")
    assert not list(tmp_path.rglob("escaped*"))


@pytest.mark.parametrize("content, fragment", [
    ("- a\n- b\n", "must be a mapping"),
    ("regime: [unclosed\n", "not valid YAML"),
])
def test_study_cli_malformed_regime_file_is_one_line(tmp_path, content, fragment):
    regime = tmp_path / "bad_regime.yaml"
    regime.write_text(content)
    res = _cli("study.py", "--study", "s", "--regime", str(regime),
               "--studies-root", str(tmp_path / "studies"), cwd=tmp_path)
    _one_line_error(res, "--regime", fragment)


def test_study_cli_name_outside_studies_root_is_refused(tmp_path):
    res = _cli("study.py", "--study", "../outside", "--studies-root",
               str(tmp_path / "studies"), cwd=tmp_path)
    _one_line_error(res, "--study")
    assert not (tmp_path / "outside").exists()


def _explore(tmp_path: Path, study: str, *extra: str):
    configs = write_slot_yamls(tmp_path / "configs")
    return _cli("explore.py", "--study", study, "--iterations", "4", "--block-size", "4",
                "--backend", "inline", "--no-mlflow", "--runner", SYNTHETIC,
                "--config-dir", str(configs), "--studies-root", str(tmp_path / "studies"),
                *extra, cwd=tmp_path)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b"])
def test_explore_cli_study_name_outside_root_is_refused(tmp_path, name):
    res = _explore(tmp_path, name)
    _one_line_error(res, "--study")
    assert not (tmp_path / "tree.json").exists()
    assert not (tmp_path / "studies" / "tree.json").exists()


def test_explore_cli_truncated_tree_is_one_line(tmp_path):
    folder = tmp_path / "studies" / "t"
    folder.mkdir(parents=True)
    (folder / "tree.json").write_text('{"settings": {"study": "t", "nodes"')
    res = _explore(tmp_path, "t")
    _one_line_error(res, "tree.json")


def test_explore_cli_resume_refuses_a_changed_override(tmp_path):
    first = _explore(tmp_path, "t", "--override", "training.batch_size=4")
    assert first.returncode == 0, first.stderr
    tree = json.loads((tmp_path / "studies" / "t" / "tree.json").read_text())
    assert tree["settings"]["overrides"] == {"training.batch_size": 4}
    same = _explore(tmp_path, "t", "--override", "training.batch_size=4")
    assert same.returncode == 0, same.stderr
    before = (tmp_path / "studies" / "t" / "tree.json").read_text()
    changed = _explore(tmp_path, "t", "--override", "training.batch_size=2")
    _one_line_error(changed, "--override training.batch_size=2", "training.batch_size=4")
    assert (tmp_path / "studies" / "t" / "tree.json").read_text() == before


def test_config_file_that_is_a_list_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    res = _cli("phase2.py", "--config", str(path), cwd=tmp_path)
    _one_line_error(res, str(path))
