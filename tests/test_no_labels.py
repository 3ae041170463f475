"""No training code path can read metabolite type labels (SPEC: labels are for evaluation only).

(a) the training container holds no types; (b) training modules (the trainers' import
closure) never import the ground-truth loaders or evaluation modules; (c) training runs with the
ground-truth file deleted; (d) poisoning every ground-truth array (types, lambda, cb, log10 k)
leaves the Phase 1 checkpoint and the trained Phase 2 model bit-identical, so no value derived
from them can reach training through any path, static or not.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ALL_STRATEGIES, ROOT, copy_data_root, tiny_dict
from metabolism import data as data_mod
from metabolism.config import config_from_dict
from metabolism.data import TrainingData, dataset_dir, load_training_data
from metabolism.experiment import ensure_phase1, load_phase1_model, run_phase2
from metabolism.integrity import RECORD_SUFFIX, describe_arrays, write_record
from metabolism.network import GroundTruth, Stoichiometry
from metabolism.phase2 import train_phase2

LOCAL_PACKAGES = ("metabolism", "kernels")
TRAINERS = ("metabolism.phase1", "metabolism.phase2")
# the data layer defines both sides of the split (TrainingData and GroundTruth, the simulator
# that needs the truth): the trainers may import it, the name check below does not apply to it
DATA_LAYER = {"metabolism.data", "metabolism.network", "metabolism.simulate"}
FORBIDDEN_MODULES = {"metabolism.metrics", "metabolism.plots", "metabolism.experiment"}
# the noiseless observed frames are ground truth too (evaluation only)
FORBIDDEN_NAMES = {"load_ground_truth", "GroundTruth", "load_clean_concentrations",
                   "clean_concentrations"}


def _all_strategies_cfg():
    d = tiny_dict()
    d["training"]["strategies"] = copy.deepcopy(ALL_STRATEGIES)
    d["training"]["node_output_scale"] = "residual"
    return config_from_dict(d)


# ----------------------------------------------------------------------------- (a)


def test_training_data_has_no_types():
    names = {f.name for f in dataclasses.fields(TrainingData)}
    assert names == {"concentrations", "delta_t", "stoich", "observe_every"}
    for f in dataclasses.fields(TrainingData):
        assert f.type not in (GroundTruth, "GroundTruth")
        assert "type" not in f.name and "label" not in f.name
    # the stoichiometry it carries has no hidden parameters either
    assert {f.name for f in dataclasses.fields(Stoichiometry)} == {
        "S", "substrate_index", "substrate_coeff"}


def test_training_file_has_no_labels(tiny_phase1):
    cfg, data_root, _, _ = tiny_phase1
    folder = dataset_dir(cfg, data_root)
    with np.load(folder / "training.npz") as f:
        keys = set(f.files)
    assert "types" not in keys
    assert not keys & {"log10_k", "lambda_per_type", "baseline_per_type",
                       "clean_concentrations"}
    with np.load(folder / "ground_truth.npz") as f:
        assert "types" in f.files  # labels exist, but only in the evaluation file
    data = load_training_data(folder)
    assert not any(isinstance(getattr(data, f.name), GroundTruth)
                   for f in dataclasses.fields(data))


# ----------------------------------------------------------------------------- (b)


def _imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(modules imported, names imported or referenced) in a module."""
    modules, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            modules.add(mod)
            for a in node.names:
                modules.add(f"{mod}.{a.name}")
                names.add(a.name)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
    return modules, names


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def training_modules() -> dict[str, Path]:
    """Every local module the trainers import, directly or not (imports inside functions
    included): a new module on the training path is checked without being listed here."""
    found: dict[str, Path] = {}
    todo = list(TRAINERS)
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in found or path is None:
            continue
        found[name] = path
        modules, _ = _imports(ast.parse(path.read_text(), filename=str(path)))
        todo += [m for m in modules if m.split(".")[0] in LOCAL_PACKAGES]
    return found


TRAINING_MODULES = training_modules()


def test_import_graph_reaches_the_training_code():
    assert {"metabolism.phase1", "metabolism.phase2", "metabolism.strategies",
            "metabolism.rollout", "metabolism.model", "kernels.reference",
            "kernels.dispatch"} <= set(TRAINING_MODULES)
    assert not set(TRAINING_MODULES) & FORBIDDEN_MODULES


@pytest.mark.parametrize("name", sorted(TRAINING_MODULES))
def test_training_modules_never_touch_ground_truth(name):
    path = TRAINING_MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    modules, names = _imports(tree)
    bad_mods = {m for m in modules if any(m == f or m.startswith(f + ".")
                                          for f in FORBIDDEN_MODULES)}
    assert not bad_mods, f"{path.name} imports evaluation-only modules {bad_mods}"
    if name in DATA_LAYER:
        return
    assert not names & FORBIDDEN_NAMES, f"{path.name} references {names & FORBIDDEN_NAMES}"
    for node in ast.walk(tree):  # nor does it open the ground-truth file by name
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert "ground_truth" not in node.value, f"{path.name}: {node.value!r}"


def test_static_check_catches_a_violation():
    src = "from metabolism.data import TrainingData, load_ground_truth\nimport metabolism.metrics\n"
    modules, names = _imports(ast.parse(src))
    assert "load_ground_truth" in names and "metabolism.metrics" in modules


def test_training_function_signatures_have_no_labels():
    import inspect

    from metabolism import strategies
    from metabolism.phase1 import train_phase1

    for fn in (train_phase2, train_phase1, strategies.contrastive_loss,
               strategies.residual_targets, strategies.residual_loss,
               strategies.residual_scale, strategies.contrastive_grid,
               strategies.fit_errors, strategies.reassign_embeddings):
        params = inspect.signature(fn).parameters
        assert not {"types", "labels", "truth", "ground_truth"} & set(params), fn.__name__


# ----------------------------------------------------------------------------- (c)


def test_trains_without_ground_truth_file(tiny_phase1, tmp_path, monkeypatch):
    cfg0, data_root, ckpt, _ = tiny_phase1
    root = copy_data_root(data_root, tmp_path / "data")
    folder = dataset_dir(cfg0, root)
    (folder / "ground_truth.npz").unlink()
    assert not (folder / "ground_truth.npz").exists()

    def no_labels(*a, **k):
        raise AssertionError("training asked for the ground truth")

    monkeypatch.setattr(data_mod, "load_ground_truth", no_labels)
    cfg = _all_strategies_cfg()
    assert len(cfg.training.strategies.enabled_names()) == 8
    data = load_training_data(folder)
    model = load_phase1_model(ckpt, data, cfg)
    node0 = [p.detach().clone() for p in model.mlp_node.parameters()]
    res = train_phase2(model, data, cfg.training, progress=False)
    assert len(res.losses) == cfg.training.data_augmentation_loop
    assert np.all(np.isfinite(res.losses)) and np.isfinite(res.final_loss)
    assert any(not torch.equal(a, b) for a, b in zip(node0, model.mlp_node.parameters()))


# ----------------------------------------------------------------------------- (d)


def _poison_ground_truth(folder: Path, rng_seed: int) -> None:
    """Replace every array only evaluation may read: types permuted, lambda and cb changed
    (so lambda * cb, lambda * (c - cb), ... all change), true log10 k shuffled."""
    path = folder / "ground_truth.npz"
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    rng = np.random.default_rng(rng_seed)
    new = rng.permutation(d["types"])
    assert not np.array_equal(new, d["types"])
    d["types"] = new
    d["lambda_per_type"] = d["lambda_per_type"] * rng.uniform(2, 5, d["lambda_per_type"].shape)
    d["baseline_per_type"] = d["baseline_per_type"] + rng.uniform(1, 3,
                                                                  d["baseline_per_type"].shape)
    d["log10_k"] = rng.permutation(d["log10_k"])
    np.savez(path, **d)
    write_record(path, describe_arrays(d))  # a deliberate change: recorded, not "corrupt"


def test_ground_truth_cannot_influence_phase1(tiny_phase1, tmp_path):
    """Phase 1 built from scratch next to a poisoned ground truth: the same checkpoint."""
    cfg, data_root, ckpt, info = tiny_phase1
    root = tmp_path / "data"
    folder = dataset_dir(cfg, root)
    folder.mkdir(parents=True)
    for name in ("training.npz", "ground_truth.npz"):
        for f in (name, name + RECORD_SUFFIX):
            shutil.copy(dataset_dir(cfg, data_root) / f, folder / f)
    _poison_ground_truth(folder, 1)
    path, poisoned_info = ensure_phase1(cfg, root, progress=False, quiet=True)
    a = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs when only the ground truth differs"
    # ... while the evaluation did read the poisoned truth
    assert poisoned_info["rate_constants_R2"] != info["rate_constants_R2"]


def test_labels_cannot_influence_training(tiny_phase1, tmp_path, mlflow_uri):
    """Full pipeline (with evaluation callbacks) on the true vs a poisoned ground truth (labels,
    lambda, cb, log10 k): the same model, bit for bit."""
    cfg0, data_root, _, _ = tiny_phase1
    cfg = _all_strategies_cfg()
    root_a = copy_data_root(data_root, tmp_path / "a")
    root_b = copy_data_root(data_root, tmp_path / "b")
    folder_b = dataset_dir(cfg, root_b)
    _poison_ground_truth(folder_b, 0)
    ckpts = sorted(folder_b.glob("phase1-*.pt"))
    assert ckpts, "the copied Phase 1 checkpoint is reused"
    mtime = ckpts[0].stat().st_mtime_ns

    ra = run_phase2(cfg, runs_root=tmp_path / "runs_a", data_root=root_a, progress=False,
                    quiet=True)
    rb = run_phase2(cfg, runs_root=tmp_path / "runs_b", data_root=root_b, progress=False,
                    quiet=True)
    assert ckpts[0].stat().st_mtime_ns == mtime  # Phase 1 not rebuilt
    sa = torch.load(ra.run_dir / "phase2_checkpoint.pt", map_location="cpu",
                    weights_only=True)["state_dict"]
    sb = torch.load(rb.run_dir / "phase2_checkpoint.pt", map_location="cpu",
                    weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs when only the ground truth differs"
    assert ra.metrics["phase2_loss"] == rb.metrics["phase2_loss"]
    assert ra.metrics["phase2_node_magnitude"] == rb.metrics["phase2_node_magnitude"]
    # ... while the evaluation did read the altered truth
    per_type = [k for k in ra.metrics if k.startswith("MLP_node_slope_")]
    assert any(ra.metrics[k] != rb.metrics[k] for k in per_type)
    assert ra.metrics["MLP_node_gt_offset_0"] != rb.metrics["MLP_node_gt_offset_0"]
