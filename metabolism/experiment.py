"""One experiment end to end: dataset -> Phase 1 checkpoint (cached) -> Phase 2 -> metrics,
plots, analysis.log, MLflow. The only module that holds both training data and ground truth;
it hands the trainers TrainingData alone and keeps GroundTruth for evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch

from metabolism import compute, plots, tracking
from metabolism.config import Config
from metabolism.data import (TrainingData, dataset_dir, ensure_dataset,
                             load_clean_concentrations, load_ground_truth, load_training_data,
                             report)
from metabolism.files import replace_atomically, write_text_atomically
from metabolism.integrity import (CacheError, NoRecord, cache_lock, check_shapes,
                                  describe_arrays, read_record, verify, write_record)
from metabolism.metrics import (corrected_log10_k, dbscan_labels, evaluate, matched_types,
                                node_fn_of, rate_constants_r2, residual_error_vs_truth,
                                sweep_node)
from metabolism.model import MetabolismModel
from metabolism.observations import estimate_relative_noise
from metabolism.network import GroundTruth
from metabolism.phase1 import train_phase1
from metabolism.phase1_quality import (MAX_LAW_ERROR, assess_phase1, learned_law_error,
                                      phase2_residual)
from metabolism.phase2 import strategy_events, train_phase2
from metabolism.strategies import uses_conserved_law
from metabolism.verdict import classify_slope_ratio, targets_met


# updates per MLflow batch of the loss curve: what a killed run can lose at most
LOSS_BATCH = 50


@dataclass
class RunResult:
    status: str
    metrics: dict[str, float]
    run_dir: Path
    mlflow_run_id: str
    plots: dict[str, Path] = field(default_factory=dict)


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


# ----------------------------------------------------------------------------- Phase 1


def phase1_checkpoint_path(cfg: Config, data_root: Path) -> Path:
    """The checkpoint of a Phase 1 of exactly phase1.n_steps (max_steps does not key it: an
    extended Phase 1 is the checkpoint of its final length)."""
    cfg = _fixed_length(cfg, cfg.phase1.n_steps)
    key = cfg.hash_of("simulation", "model", "phase1")
    return dataset_dir(cfg, data_root) / f"phase1-{key}.pt"


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def new_model(data: TrainingData, cfg: Config) -> MetabolismModel:
    """A fresh model; the input scale is the mean training concentration (data-derived)."""
    return MetabolismModel(data.stoich, cfg.model, float(data.concentrations.mean()))


def _phase1_shapes(model: MetabolismModel) -> dict[str, tuple]:
    """The Phase 1 tensors a checkpoint must hold for this config, with their shapes."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k.startswith(MetabolismModel.PHASE1_PREFIXES)}


def _read_checkpoint(path: Path) -> dict:
    try:  # weights_only: a crafted file cannot run code while it is read
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError, RuntimeError, UnpicklingError: all "unreadable"
        raise CacheError(f"{path}: unreadable ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CacheError(f"{path}: not a Phase 1 checkpoint (no state_dict)")
    return ckpt


def _write_phase1(path: Path, info_path: Path, model: MetabolismModel, info: dict,
                  dataset_sha256: str) -> None:
    # parallel slot runs may build the same checkpoint at once
    state = model.state_dict()
    replace_atomically(path, lambda fh: torch.save({"state_dict": state, "info": info}, fh))
    write_record(path, describe_arrays(state), dataset_sha256=dataset_sha256, info=info)
    write_text_atomically(info_path, json.dumps(info, indent=2))
    write_record(info_path, {})


def _verified_phase1(path: Path, info_path: Path, data: TrainingData, truth: GroundTruth,
                     cfg: Config, dataset_sha256: str) -> dict:
    """The info of a checkpoint that matches its records, this config and this dataset.
    One written before records existed is adopted only if it loads, has this config's
    shapes and reproduces the R2 its info reports; CacheError otherwise."""
    shapes = _phase1_shapes(new_model(data, cfg))
    try:
        record = verify(path, shapes)
        verify(info_path)
    except NoRecord as exc:
        info = _adopt_phase1(path, info_path, data, truth, cfg, dataset_sha256, exc)
        _check_window_segment(path, info, cfg)
        return info
    if record.get("dataset_sha256") != dataset_sha256:
        raise CacheError(f"{path}: trained on another dataset than "
                         f"{path.parent / 'training.npz'}")
    info = json.loads(info_path.read_text())
    if info != record.get("info"):
        raise CacheError(f"{info_path}: differs from the info recorded with {path.name}")
    _check_window_segment(path, info, cfg)
    return info


def _check_window_segment(path: Path, info: dict, cfg: Config) -> None:
    """phase1.window_segment is left out of the cache key at its default (the one-frame
    checkpoints of noiseless data do not depend on it), so a checkpoint of window targets
    says its segment in its info; one written before the key existed (segment 16, not said)
    or with another segment is not this config's checkpoint."""
    targets = str(info.get("derivative_targets", "difference"))
    if not targets.startswith("window"):
        return
    found = re.search(r"segment (\d+)", targets)
    segment = int(found.group(1)) if found else 16
    if segment != cfg.phase1.window_segment:
        raise CacheError(f"{path}: built from window batches of segment {segment}, "
                         f"phase1.window_segment is {cfg.phase1.window_segment}")


def _adopt_phase1(path: Path, info_path: Path, data: TrainingData, truth: GroundTruth,
                  cfg: Config, dataset_sha256: str, why: Exception) -> dict:
    try:
        info = json.loads(info_path.read_text())
        claimed = float(info["rate_constants_R2"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{info_path}: unreadable Phase 1 info ({exc})") from None
    model = load_phase1_model(path, data, cfg, verified=False)
    r2 = phase1_r2(model, data, truth)
    if not abs(r2 - claimed) < 1e-6:
        raise CacheError(f"{path}: gives rate_constants_R2 {r2:.4f}, its info says "
                         f"{claimed:.4f} (corrupt)")
    state = _read_checkpoint(path)["state_dict"]
    write_record(path, describe_arrays(state), dataset_sha256=dataset_sha256, info=info)
    write_record(info_path, {})
    report(f"{why}; loads, matches the config's shapes and reproduces R2 {r2:.4f}: adopted "
           "and recorded")
    return info


def phase1_r2(model: MetabolismModel, data: TrainingData, truth: GroundTruth) -> float:
    return rate_constants_r2(model.log10_k.detach().double().numpy(), data.stoich,
                             model.sub_scale(), truth)


def _fixed_length(cfg: Config, steps: int) -> Config:
    return dataclasses.replace(cfg, phase1=dataclasses.replace(cfg.phase1, n_steps=steps,
                                                                max_steps=0))


def phase1_step_schedule(p1) -> list[int]:
    """n_steps, then doubled while it stays within max_steps (0: n_steps alone)."""
    steps = [p1.n_steps]
    while p1.max_steps and steps[-1] * 2 <= p1.max_steps:
        steps.append(steps[-1] * 2)
    return steps


def ensure_phase1(cfg: Config, data_root: Path, progress: bool = True,
                  quiet: bool = False, rebuild: bool = True) -> tuple[Path, dict]:
    """The dataset and a verified Phase 1 checkpoint, built if missing and rebuilt if
    corrupt (with rebuild=False: CacheError naming the file); return (path, info).

    While the data-only trust verdict (phase1_quality) calls a checkpoint untrusted, Phase 1
    is trained anew with twice the steps, up to phase1.max_steps: R2 does not show a residual
    too noisy for Phase 2 (0.961 -> 0.960 while the law error fell 0.28 -> 0.16), the
    verdict does. Each length is its own checkpoint, keyed as a fixed-length Phase 1; when
    none is trusted, the one with the lowest law error is used.
    """
    schedule = phase1_step_schedule(cfg.phase1)
    tried: list[tuple[float, Path, dict]] = []
    data = None
    for i, steps in enumerate(schedule):
        fixed = _fixed_length(cfg, steps)
        path, info = _ensure_fixed_phase1(fixed, data_root, progress, quiet, rebuild)
        if len(schedule) == 1:
            return path, info
        if data is None:  # the dataset is the same for every length
            data = load_training_data(dataset_dir(cfg, data_root))
        quality = assess_phase1(load_phase1_model(path, data, fixed), data)
        if quality.verdict != "untrusted":
            return path, info
        tried.append((quality.law_error, path, info))
        if i + 1 < len(schedule):
            _say(f"phase 1 after {steps} steps untrusted ({quality.reason}); "
                 f"training anew with {schedule[i + 1]} steps (phase1.max_steps "
                 f"{cfg.phase1.max_steps})", quiet)
    # longer is not always better (a regime went 0.67 -> 0.33 -> 0.83): the least wrong one
    law_error, path, info = min(tried, key=lambda t: t[0])
    _say(f"phase 1 untrusted at every length up to {schedule[-1]} steps; using the "
         f"{info['n_steps']}-step checkpoint (law error {law_error:.2f}, the lowest)", quiet)
    return path, info


def _ensure_fixed_phase1(cfg: Config, data_root: Path, progress: bool, quiet: bool,
                         rebuild: bool) -> tuple[Path, dict]:
    folder = ensure_dataset(cfg, data_root, rebuild=rebuild)
    path = phase1_checkpoint_path(cfg, data_root)
    info_path = path.with_suffix(".json")
    with cache_lock(folder):  # one builder; the others wait and then verify its result
        data, truth = load_training_data(folder), load_ground_truth(folder)
        dataset_sha256 = read_record(folder / "training.npz")["sha256"]
        if path.exists() or info_path.exists():
            try:
                return path, _verified_phase1(path, info_path, data, truth, cfg, dataset_sha256)
            except CacheError as exc:
                if not rebuild:
                    raise CacheError(f"{exc} (not rebuilt: --no-rebuild)") from None
                report(f"{exc}; rebuilding the Phase 1 checkpoint")
        device = compute.setup(cfg.compute)
        _say(f"building Phase 1 checkpoint {path} on {device}", quiet)
        torch.manual_seed(cfg.phase1.seed)
        model = new_model(data, cfg).to(device)
        res = train_phase1(model, data, cfg.phase1, progress=progress)
        model = model.cpu_copy()  # the checkpoint holds CPU tensors: it loads on any device
        r2 = phase1_r2(model, data, truth)
        info = {"rate_constants_R2": r2, "seconds": res.seconds, "final_loss": res.losses[-1],
                "n_steps": cfg.phase1.n_steps, "device": str(device),
                "device_name": compute.device_name(device), "derivative_targets": res.targets}
        _write_phase1(path, info_path, model, info, dataset_sha256)
    _say(f"phase 1: rate_constants_R2 = {r2:.4f} in {res.seconds:.0f} s", quiet)
    return path, info


# what Phase 1 learned: log10 k, MLP_sub, and the input scale MLP_sub was trained with
PHASE1_CHECKPOINT_KEYS = MetabolismModel.PHASE1_PREFIXES + ("concentration_scale",)


def load_phase1_model(path: Path, data: TrainingData, cfg: Config,
                      verified: bool = True) -> MetabolismModel:
    """A model with Phase 1's learned tensors from the checkpoint, the stoichiometry of `data`
    (the checkpoint's copy is not read back: the network is the data's, in the data's
    metabolite order) and fresh MLP_node / embeddings. The file is checked against its
    integrity record first (verified=False: only for adopting a checkpoint written before
    records existed)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: Phase 1 checkpoint missing")
    torch.manual_seed(cfg.training.seed)
    model = new_model(data, cfg)
    shapes = _phase1_shapes(model)
    if verified:
        verify(path, shapes)
    state = _read_checkpoint(path)["state_dict"]
    check_shapes(path, describe_arrays(state), shapes)
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise CacheError(f"{path}: holds non-finite values")
    keep = {k: v for k, v in state.items() if k.startswith(PHASE1_CHECKPOINT_KEYS)}
    missing, _ = model.load_state_dict(keep, strict=False)
    bad = [m for m in missing if m.startswith(PHASE1_CHECKPOINT_KEYS)]
    unexpected = sorted(set(state) - set(model.state_dict()))
    if bad or unexpected:
        raise CacheError(f"{path}: checkpoint does not match the model (missing {bad}, "
                         f"unexpected {unexpected})")
    return model


# ----------------------------------------------------------------------------- Phase 2


class _Evaluator:
    """Periodic evaluation during training: metrics to MLflow, plots to tmp_training/.

    Holds the ground truth (and the noiseless observed frames, which set the sweep range, so
    runs at different noise levels are measured on the same range); the trainer only calls it
    and never sees what it computes.
    """

    def __init__(self, run_dir: Path, data: TrainingData, truth: GroundTruth, cfg: Config,
                 clean_concentrations: np.ndarray):
        self.run_dir, self.data, self.truth, self.cfg = run_dir, data, truth, cfg
        self.clean = clean_concentrations
        self.plots: dict[str, Path] = {}
        self.metrics: dict[str, float] = {}
        self.sweep = None

    def context(self, step: int | None = None) -> str:
        """'slot 3 (T=64), seed 0, update 600/600': the title line every plot carries."""
        tr = self.cfg.training
        slot = f"slot {self.cfg.slot}" if self.cfg.slot is not None else "no slot"
        text = f"{slot} (T={tr.homeostasis_time_step}), seed {tr.seed}, regime {self.cfg.regime}"
        return text + (f", update {step}/{tr.data_augmentation_loop}" if step is not None else "")

    def __call__(self, step: int, model) -> None:
        model = model.cpu_copy()
        ev = self.cfg.evaluation
        metrics, sweep = evaluate(model, self.clean, self.data.stoich, self.truth, ev)
        self.metrics, self.sweep = metrics, sweep
        tracking.log_metrics_finite(split_ground_truth(metrics)[0], step=step)
        tmp = self.run_dir / "tmp_training"
        self.plots["mlp_node"] = plots.plot_mlp_node(
            node_fn_of(model), sweep, self.truth,
            tmp / "function" / "rate_func" / f"MLP_node_p2_{step}.png",
            self.data.concentrations, self.context(step))
        if "rate_constants" not in self.plots:  # frozen since Phase 1: one plot per run
            corrected = corrected_log10_k(model.log10_k.detach().cpu().double().numpy(),
                                          self.data.stoich.n_substrates, model.sub_scale())
            self.plots["rate_constants"] = plots.plot_rate_constants(
                self.truth.log10_k, corrected, metrics["rate_constants_R2"],
                tmp / "rate_constants" / "comparison.png", self.context())
        emb = model.embeddings.detach().cpu().double().numpy()
        clusters = dbscan_labels(emb, ev)
        self.plots["embedding"] = plots.plot_embeddings(
            emb, self.truth.types, clusters, matched_types(clusters, self.truth.types),
            metrics["embedding_cluster_acc"], ev.cluster_distance_threshold,
            tmp / "embedding" / f"embedding_p2_{step}.png", self.context(step))


def write_analysis_log(path: Path, metrics: dict[str, float], header: dict[str, str]) -> None:
    lines = [f"# {k}: {v}" for k, v in header.items()]
    lines += [f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in metrics.items()]
    write_text_atomically(path, "\n".join(lines) + "\n")


def read_analysis_log(path: Path) -> dict[str, float]:
    out = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"^([A-Za-z_][\w]*): (\S+)$", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def default_run_name(cfg: Config, tags: dict[str, str] | None = None,
                     when: float | None = None) -> str:
    """origin-slot-T-seed-time, readable in the UI and unique per second: the origin (run,
    quick, study-<name>[-<variant>], explore-<study>-iter<n>) keeps an exploration's slot 3 run
    apart from a plain slot 3 run."""
    tags = tags or {}
    if "node_id" in tags:
        origin = f"explore-{tags.get('study', '')}-iter{tags['node_id']}"
    elif "study" in tags:
        variant = tags.get("variant", "default")
        origin = f"study-{tags['study']}" + ("" if variant == "default" else f"-{variant}")
    else:
        origin = cfg.regime if cfg.regime in ("quick", "test") else "run"
    slot = f"slot{cfg.slot}" if cfg.slot is not None else "noslot"
    stamp = time.strftime("%m%d-%H%M%S", time.localtime(when))
    return f"{origin}-{slot}-T{cfg.training.homeostasis_time_step}-s{cfg.training.seed}-{stamp}"


def _log_inputs(data_folder: Path, data: TrainingData, ckpt: Path) -> None:
    """The training data as an MLflow dataset (name, digest, source shown on the run page) and
    the frozen Phase 1 checkpoint as an artifact, so a run names exactly what it learned from."""
    import warnings

    import mlflow.data

    with warnings.catch_warnings():  # MLflow warns that two source classes fit a local path
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_numpy(data.concentrations,
                                    source=str(data_folder / "training.npz"),
                                    name=data_folder.name)
    mlflow.log_input(ds, context="training")
    mlflow.log_artifact(str(ckpt), "phase1")


def split_ground_truth(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, ground-truth constants): the constants (-lambda_t, lambda_t cb_t) are the same
    at every step, so MLflow gets them as params and its metric list keeps what was learned."""
    truth = {k: v for k, v in metrics.items() if "_gt_" in k}
    return {k: v for k, v in metrics.items() if k not in truth}, truth


def learned_law_check(model, data: TrainingData, n_points: int) -> float:
    """learned_law_error of the trained model, its slopes swept over each metabolite's observed
    range in the training data (not the evaluation's noiseless frames: data only)."""
    c = data.concentrations
    sweep = sweep_node(node_fn_of(model), c.min(0), c.max(0), n_points)
    return learned_law_error(sweep.slopes, data)


def learned_law_verdict(error: float) -> str:
    """The analysis.log line on learned_law_error; its first word is the MLflow tag."""
    if not math.isfinite(error):
        return "unknown (no reliable conserved-law reference on these data)"
    if error > MAX_LAW_ERROR:
        return (f"inconsistent (the learned slopes are off by {error:.2f} of the law the "
                f"conserved totals show, limit {MAX_LAW_ERROR:g}: do not trust its slopes)")
    return (f"consistent (the learned slopes are within {error:.3f} of the law the conserved "
            f"totals show)")


def verdict_tags(metrics: dict[str, float], n_types: int) -> dict[str, str]:
    return {"verdict": classify_slope_ratio(metrics.get("avg_slope_ratio", float("nan"))),
            "targets_met": str(targets_met(metrics, n_types)).lower()}


def new_run_dir(path: Path) -> Path:
    """Create and return path, or path~1, path~2, ... if taken. mkdir itself decides, so two
    processes starting the same run in the same second never share a folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, suffix = path, 0
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = path.with_name(f"{path.name}~{suffix}")


def run_phase2(cfg: Config, *, runs_root: Path = Path("runs"), data_root: Path = Path("data"),
               parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None,
               progress: bool = True, quiet: bool = False, rebuild: bool = True) -> RunResult:
    """One Phase 2 experiment, tracked in MLflow; raises (run marked FAILED) on failure."""
    runs_root, data_root = Path(runs_root), Path(data_root)
    ckpt, p1_info = ensure_phase1(cfg, data_root, progress=progress, quiet=quiet, rebuild=rebuild)
    folder = dataset_dir(cfg, data_root)
    data, truth = load_training_data(folder), load_ground_truth(folder)

    run_name = cfg.tracking.run_name or default_run_name(cfg, extra_tags)
    run_dir = new_run_dir(runs_root / cfg.tracking.experiment / (
        f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}" if cfg.tracking.run_name else run_name))
    write_text_atomically(run_dir / "config.yaml", cfg.to_yaml())
    tr = cfg.training
    device = compute.setup(cfg.compute)
    tags = {**compute.device_tags(device), "rollout_backend": cfg.compute.rollout_backend,
            "slot": str(cfg.slot), "time_step": str(tr.homeostasis_time_step),
            "strategy": tr.strategies.label(),
            "git_commit": tracking.git_commit(), "regime": cfg.regime,
            "config_source": cfg.source, **(extra_tags or {})}

    failed = {"verdict": "failed", "targets_met": "false"}
    with tracking.tracked_run(cfg.tracking.experiment, run_name, tags, parent_run_id,
                              failure_tags=failed) as run:
        run_id = run.info.run_id
        client = tracking.client()
        _say(f"run folder: {run_dir}\nMLflow run: {run_id} (experiment "
             f"'{cfg.tracking.experiment}', store {tracking.tracking_uri()})", quiet)
        tracking.log_params_flat(cfg.flat())
        _log_inputs(folder, data, ckpt)
        model = load_phase1_model(ckpt, data, cfg)
        # tagged from the checkpoint as loaded and verified, not from what its info claims
        mlflow.set_tags({"phase1_checkpoint": file_hash(ckpt),
                         "phase1_rate_constants_R2": f"{phase1_r2(model, data, truth):.4f}"})
        quality = assess_phase1(model, data)  # data only: the verdict a user gets
        mlflow.set_tag("phase1_trust", quality.verdict)
        if quality.verdict == "untrusted" and uses_conserved_law(tr.strategies, data):
            print(f"WARNING: Phase 1 untrusted, do not trust this run's results: "
                  f"{quality.reason}; MLP_node learned the conserved totals' lines, not "
                  f"Phase 1's residual, but the offsets and the rollout term still carry "
                  f"Phase 1's error", file=sys.stderr, flush=True)
        elif quality.verdict == "untrusted":
            print(f"WARNING: Phase 1 untrusted, do not trust this run's slopes: "
                  f"{quality.reason}", file=sys.stderr, flush=True)
        elif quality.verdict == "unknown":
            print(f"WARNING: Phase 1 quality unknown: {quality.reason}", file=sys.stderr,
                  flush=True)
        x_res, _, residual = phase2_residual(model, data)
        phase1_gt = residual_error_vs_truth(x_res, residual, truth)  # the report's check only
        model = model.to(device=device, dtype=compute.training_dtype(cfg.compute))
        evaluator = _Evaluator(run_dir, data, truth, cfg, load_clean_concentrations(folder))
        noise_estimate = estimate_relative_noise(data.concentrations)
        mlflow.set_tag("observation_noise_estimated", f"{noise_estimate:.3g}")
        eval_every = tr.plot_every or max(1, tr.data_augmentation_loop // 4)
        result = None
        # the loss curve goes to MLflow while training, so a killed run keeps it
        curve = tracking.MetricBuffer(run_id, every=LOSS_BATCH, client=client)
        losses_so_far: list[float] = []

        def on_update(step: int, loss: float) -> None:
            tracking.check_killed()
            losses_so_far.append(loss)
            curve.add("phase2_train_loss", loss, step)

        try:
            result = train_phase2(model, data, tr, on_eval=lambda s, m: evaluator(s, m),
                                  eval_every=eval_every, progress=progress, on_update=on_update,
                                  rollout_backend=compute.rollout_backend(cfg.compute))
        finally:  # keep what was recorded, even when training failed or was killed
            curve.flush()
            if losses_so_far:
                n = len(losses_so_far)
                components = ({f"{name} term": values for name, values in result.components.items()}
                              if result else {})
                evaluator.plots["loss"] = plots.plot_loss(
                    losses_so_far, run_dir / "tmp_training" / "loss.png", components,
                    {k: [s for s in v if s < n] for k, v in strategy_events(tr).items()},
                    evaluator.context(n))
            if result is None and (run_dir / "tmp_training").exists():
                mlflow.log_artifacts(str(run_dir / "tmp_training"), "tmp_training")
        metrics = {"phase2_loss": result.final_loss, **evaluator.metrics, **quality.metrics(),
                   **phase1_gt}
        if math.isfinite(result.residual_law_reliability):
            metrics["residual_law_reliability"] = result.residual_law_reliability
        metrics["node_output_scale"] = result.node_output_scale
        learned = learned_law_check(model, data, cfg.evaluation.n_sweep_points)
        learned_verdict = learned_law_verdict(learned)
        if math.isfinite(learned):
            metrics["learned_law_error"] = learned
        header = {"run": run_name, "slot": str(cfg.slot),
                  "time_step": str(tr.homeostasis_time_step), "strategy": tr.strategies.label(),
                  "strategy_params": tr.strategies.describe(),
                  "observations": f"observation_noise {cfg.simulation.observation_noise}, "
                                  f"observe_every {cfg.simulation.observe_every}; noise "
                                  f"estimated from the data {noise_estimate:.3g}; residual "
                                  f"targets {result.residual_targets}; Phase 1 targets "
                                  f"{p1_info.get('derivative_targets', 'difference')}",
                  "phase1_checkpoint": f"{ckpt} ({file_hash(ckpt)})",
                  "sweep_range": "per metabolite, its observed [min, max] in the training "
                                 f"data; median low {np.median(evaluator.sweep.low):.3g}, "
                                 f"median high {np.median(evaluator.sweep.high):.3g}, "
                                 f"{cfg.evaluation.n_sweep_points} points",
                  "dbscan": f"eps={cfg.evaluation.cluster_distance_threshold}, "
                            f"min_samples={cfg.evaluation.dbscan_min_samples}",
                  "training_seconds": f"{result.seconds:.1f}",
                  "device": f"{device} ({compute.device_name(device)}), "
                            f"{torch.get_num_threads()} torch threads",
                  "phase1_trust": f"{quality.verdict} ({quality.reason})",
                  "learned_law": learned_verdict}
        write_analysis_log(run_dir / "analysis.log", metrics, header)
        mlflow.set_tag("learned_law", learned_verdict.split(" ")[0])
        if math.isfinite(learned) and learned > MAX_LAW_ERROR:
            print(f"WARNING: this run's learned law is off: {learned_verdict}",
                  file=sys.stderr, flush=True)
        # the evaluation metrics were logged at the final update by the evaluator; logging them
        # again without a step would add a point at step 0 that never happened
        tracking.log_metrics_finite({"phase2_loss": result.final_loss,
                                     "residual_law_reliability": result.residual_law_reliability,
                                     "node_output_scale": result.node_output_scale,
                                     "learned_law_error": learned},
                                    step=tr.data_augmentation_loop)
        # measured once, before training; logged with the final evaluation's step
        tracking.log_metrics_finite({**quality.metrics(), **phase1_gt},
                                    step=tr.data_augmentation_loop)
        _, truth_constants = split_ground_truth(metrics)
        tracking.log_params_flat({f"ground_truth.{k}": f"{v:.6g}"
                                  for k, v in truth_constants.items()})
        outcome = verdict_tags(metrics, cfg.simulation.n_metabolite_types)
        mlflow.set_tags(outcome)
        mlflow.set_tag("mlflow.note.content", (
            f"verdict {outcome['verdict']}, targets met: {outcome['targets_met']}; "
            f"avg_slope_ratio {metrics['avg_slope_ratio']:.3f}, embedding_cluster_acc "
            f"{metrics['embedding_cluster_acc']:.3f} ({metrics['embedding_n_clusters']:.0f} "
            f"clusters), rate_constants_R2 {metrics['rate_constants_R2']:.4f}"))
        torch.save({"state_dict": model.cpu_copy().state_dict(), "config": cfg.to_dict(),
                    "phase1_checkpoint": str(ckpt)}, run_dir / "phase2_checkpoint.pt")
        mlflow.log_artifact(str(run_dir / "analysis.log"))
        mlflow.log_artifact(str(run_dir / "config.yaml"))
        mlflow.log_artifact(str(run_dir / "phase2_checkpoint.pt"))
        mlflow.log_artifacts(str(run_dir / "tmp_training"), "tmp_training")
        _say(f"avg_slope_ratio = {metrics['avg_slope_ratio']:.3f}, "
             f"embedding_cluster_acc = {metrics['embedding_cluster_acc']:.2f}, "
             f"rate_constants_R2 = {metrics['rate_constants_R2']:.3f}\n"
             f"analysis.log: {run_dir / 'analysis.log'}\n"
             f"compare runs: {tracking.ui_command()}", quiet)
    return RunResult(status="FINISHED", metrics=metrics, run_dir=run_dir, mlflow_run_id=run_id,
                     plots=dict(evaluator.plots))
