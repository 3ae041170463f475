"""The Phase 1 trust measure: its Phase-1-free reference, its verdicts, and where it shows.

The reference (each metabolite's homeostatic slope from the conserved totals) must be exact
on simulated data; a residual equal to the true law is trusted, one whose law is 0.7x the
truth (what Phase 1 without drift correction leaves) or buried in noise is not; the quick
regime, whose Phase 1 error is ~46x the homeostatic law (ground truth, evaluation side), is
flagged in analysis.log, as an MLflow tag and on the console.
"""

from __future__ import annotations

import numpy as np
import pytest

from metabolism.cli import QUICK_OVERRIDES
from metabolism.config import load_config
from metabolism.data import ensure_dataset, load_ground_truth, load_training_data
from metabolism.experiment import read_analysis_log, run_phase2
from metabolism.conservation import (conserved_law_slopes, conserved_quantities,
                                     finite_differences)
from metabolism.phase1_quality import MAX_LAW_ERROR, assess_residual


@pytest.fixture(scope="module")
def quick_data(tmp_path_factory):
    cfg = load_config("slot0", dict(QUICK_OVERRIDES))
    folder = ensure_dataset(cfg, tmp_path_factory.mktemp("data"))
    data, truth = load_training_data(folder), load_ground_truth(folder)
    x, y = finite_differences(data)
    return cfg, data, truth, x, y


def test_conserved_totals_give_every_metabolites_law(quick_data):
    _, data, truth, x, y = quick_data
    M = conserved_quantities(data.stoich.S)
    assert M.shape[1] >= 1 and np.abs(M.T @ data.stoich.S).max() < 1e-10
    a = conserved_law_slopes(x, y, data.stoich.S)
    np.testing.assert_allclose(a, -truth.lam, rtol=1e-6)


def test_no_conserved_quantity_means_no_verdict(quick_data):
    _, data, truth, x, y = quick_data
    S = np.eye(x.shape[1])  # every metabolite made and consumed alone: nothing conserved
    q = assess_residual(x, y, y, S)
    assert q.verdict == "unknown" and np.isnan(q.law_error)


def test_verdicts_on_known_residuals(quick_data):
    _, data, truth, x, y = quick_data
    law = -truth.lam * (x - truth.baseline)
    exact = assess_residual(x, y, law, data.stoich.S)
    assert exact.verdict == "trusted" and exact.law_error < 1e-6
    biased = assess_residual(x, y, 0.7 * law, data.stoich.S)  # k absorbed 30% of the drift
    assert biased.verdict == "untrusted" and biased.law_error == pytest.approx(0.3, abs=0.01)
    rng = np.random.default_rng(0)
    spread = np.median(truth.lam * x.std(0))
    noisy = assess_residual(x, y, law + rng.standard_t(3, x.shape) * 20 * spread,
                            data.stoich.S)
    assert noisy.verdict == "untrusted" and noisy.noise_to_signal > 5
    mild = assess_residual(x, y, law + rng.normal(0, 0.5 * spread, x.shape), data.stoich.S)
    assert mild.verdict == "trusted" and mild.law_error < MAX_LAW_ERROR


def test_noisy_observations_give_no_verdict_rather_than_a_wrong_one(quick_data):
    """With 0.1% measurement noise the totals' one-frame differences are mostly noise: the
    reference from each half of the frames disagrees, so the verdict is unknown (with the
    measures NaN), not an "untrusted" that would only reflect the noise."""
    _, data, truth, x, y = quick_data
    rng = np.random.default_rng(1)
    c = data.concentrations * (1 + 1e-3 * rng.standard_normal(data.concentrations.shape))
    noisy_x, noisy_y = c[:-1], (c[1:] - c[:-1]) / data.delta_t
    law = -truth.lam * (noisy_x - truth.baseline)
    q = assess_residual(noisy_x, noisy_y, law, data.stoich.S)
    assert q.verdict == "unknown" and np.isnan(q.law_error), q
    assert q.reference_disagreement > MAX_LAW_ERROR and "noisy" in q.reason
    exact = assess_residual(x, y, -truth.lam * (x - truth.baseline), data.stoich.S)
    assert exact.reference_disagreement < 1e-3  # noiseless: the halves agree


def test_noisy_training_data_get_no_verdict(tmp_path):
    from metabolism.experiment import new_model
    from metabolism.phase1_quality import assess_phase1

    cfg = load_config("slot0", {**QUICK_OVERRIDES, "simulation.observation_noise": 0.01})
    data = load_training_data(ensure_dataset(cfg, tmp_path))
    q = assess_phase1(new_model(data, cfg), data)
    assert q.verdict == "unknown" and np.isnan(q.law_error) and np.isnan(q.noise_to_signal)
    assert q.observation_noise == pytest.approx(0.01, rel=0.3) and "noisy" in q.reason


def test_quick_run_is_flagged_everywhere(tmp_path, mlflow_uri, capfd):
    import mlflow

    cfg = load_config("slot0", {**QUICK_OVERRIDES, "training.data_augmentation_loop": 4})
    res = run_phase2(cfg, runs_root=tmp_path / "runs", data_root=tmp_path / "data",
                     progress=False, quiet=True)
    err = capfd.readouterr().err
    # the slot configs learn the slopes from the conserved totals, which the quick data give
    assert "WARNING: Phase 1 untrusted, do not trust this run's results" in err
    assert "MLP_node learned the conserved totals' lines, not Phase 1's residual" in err
    log = (res.run_dir / "analysis.log").read_text()
    assert "# phase1_trust: untrusted (" in log
    values = read_analysis_log(res.run_dir / "analysis.log")
    assert values["phase1_trusted"] == 0.0 and values["phase1_law_error"] > MAX_LAW_ERROR
    # the ground-truth check of the report agrees: Phase 1's error dwarfs the law here
    assert values["phase1_residual_error_truth_relative"] > 5
    run = mlflow.tracking.MlflowClient().get_run(res.mlflow_run_id)
    assert run.data.tags["phase1_trust"] == "untrusted"
    assert run.data.metrics["phase1_law_error"] == pytest.approx(values["phase1_law_error"],
                                                                 rel=1e-5)
    # four updates leave MLP_node far from any law: the result check says so, from data only
    assert "WARNING: this run's learned law is off: inconsistent" in err
    assert values["learned_law_error"] > MAX_LAW_ERROR
    assert "# learned_law: inconsistent (" in log
    assert run.data.tags["learned_law"] == "inconsistent"
    assert run.data.metrics["learned_law_error"] == pytest.approx(values["learned_law_error"],
                                                                  rel=1e-5)
    # learning from the residual, the slopes themselves carry Phase 1's error
    cfg = load_config("slot0", {**QUICK_OVERRIDES, "training.data_augmentation_loop": 4,
                                "training.strategies.residual_supervision.target": "residual"})
    run_phase2(cfg, runs_root=tmp_path / "runs", data_root=tmp_path / "data", progress=False,
               quiet=True)
    assert "WARNING: Phase 1 untrusted, do not trust this run's slopes" in capfd.readouterr().err


def test_conserved_law_targets_are_the_true_lines_when_phase1_is_off(quick_data):
    """Strategy target 'conserved_law': each metabolite's residual becomes a_i c + b_i with a_i
    from the conserved totals, so a residual whose law Phase 1 shrank to 0.7x (plus heavy
    noise) still yields the true slopes; the offsets come from a median of the residual."""
    import torch

    from metabolism.strategies import conserved_law_targets

    _, data, truth, x, _ = quick_data
    law = -truth.lam * (x - truth.baseline)
    noise = np.random.default_rng(1).standard_t(3, x.shape) * 1e-3
    xt = torch.as_tensor(x)
    targets, applied, _ = conserved_law_targets(data, xt, torch.as_tensor(0.7 * law + noise))
    assert applied
    slopes = (targets[1] - targets[0]).numpy() / (x[1] - x[0])
    np.testing.assert_allclose(slopes, -truth.lam, rtol=1e-6)
    exact = conserved_law_targets(data, xt, torch.as_tensor(law)).targets
    np.testing.assert_allclose(exact.numpy(), law, atol=1e-9)


def test_conserved_law_targets_keep_the_residual_on_noisy_observations(tmp_path, monkeypatch):
    """At 1% noise the totals' least squares reads laws many times too steep, and on the
    default network the halves of the frames agree on it (0.05 apart): the noise estimate
    alone keeps those lines out of training (the halves are made to agree here)."""
    import dataclasses

    import torch

    from metabolism import phase1_quality
    from metabolism.conservation import conserved_law_slopes
    from metabolism.strategies import conserved_law_targets

    halves_agree = phase1_quality.reference_slopes
    monkeypatch.setattr(phase1_quality, "reference_slopes",
                        lambda *args: (halves_agree(*args)[0], 0.0))

    cfg = load_config("slot0", {**QUICK_OVERRIDES, "simulation.observation_noise": 0.01})
    folder = ensure_dataset(cfg, tmp_path)
    data, truth = load_training_data(folder), load_ground_truth(folder)
    x, y = finite_differences(data)
    a = conserved_law_slopes(x, y, data.stoich.S)
    assert a is not None and np.median(np.abs(a / truth.lam)) > 10  # what the lines would be
    residual = torch.as_tensor(np.random.default_rng(2).normal(0, 1e-3, x.shape))
    kept, applied, groups = conserved_law_targets(data, torch.as_tensor(x), residual)
    assert not applied and torch.equal(kept, residual) and groups is None
    nothing_conserved = dataclasses.replace(
        data, stoich=dataclasses.replace(data.stoich, S=np.eye(x.shape[1])))
    assert not conserved_law_targets(nothing_conserved, torch.as_tensor(x), residual)[1]


def test_phase1_step_schedule_doubles_up_to_max_steps():
    from metabolism.config import Phase1Config
    from metabolism.experiment import phase1_step_schedule

    assert phase1_step_schedule(Phase1Config(n_steps=3600, max_steps=14400)) == [
        3600, 7200, 14400]
    assert phase1_step_schedule(Phase1Config(n_steps=3600, max_steps=10000)) == [3600, 7200]
    assert phase1_step_schedule(Phase1Config(n_steps=3600, max_steps=0)) == [3600]


def test_an_untrusted_phase1_is_trained_anew_with_more_steps(tmp_path, monkeypatch):
    """The tiny regime's Phase 1 is untrusted (a few steps): with max_steps it is retrained
    with 2x and 4x the steps, each its own checkpoint, and the one with the lowest law error
    is returned; a trusted one is never retrained."""
    import dataclasses

    import metabolism.experiment as experiment
    from conftest import tiny_config

    cfg = tiny_config()
    cfg = dataclasses.replace(cfg, phase1=dataclasses.replace(cfg.phase1, max_steps=80))
    verdicts = []
    real = experiment.assess_phase1

    def spy(model, data):
        q = real(model, data)
        verdicts.append(q)
        return q

    monkeypatch.setattr(experiment, "assess_phase1", spy)
    path, info = experiment.ensure_phase1(cfg, tmp_path, progress=False, quiet=True)
    assert [q.verdict for q in verdicts] == ["untrusted"] * 3  # 20, 40 and 80 steps
    assert len(list(path.parent.glob("phase1-*.pt"))) == 3
    # none trusted: the least wrong one is used, whichever length it has
    best = min(range(3), key=lambda i: verdicts[i].law_error)
    assert info["n_steps"] == [20, 40, 80][best]
    # the 20-step checkpoint is the one a fixed-length config of 20 steps gets
    fixed = dataclasses.replace(cfg, phase1=dataclasses.replace(cfg.phase1, max_steps=0))
    assert experiment.phase1_checkpoint_path(fixed, tmp_path).exists()

    monkeypatch.setattr(experiment, "assess_phase1",
                        lambda m, d: dataclasses.replace(real(m, d), law_error=0.0))
    other = tmp_path / "other"
    path2, info2 = experiment.ensure_phase1(cfg, other, progress=False, quiet=True)
    assert info2["n_steps"] == 20
    assert len(list(path2.parent.glob("phase1-*.pt"))) == 1


def test_conserved_totals_give_the_law_on_sparsely_sampled_frames(tmp_path):
    """Every 10th Euler frame observed: the differences are over the frame interval and the
    state is the Euler-weighted mean of the two ends (a difference over dt reads a law 10x
    too steep)."""
    cfg = load_config("slot0", {**QUICK_OVERRIDES, "simulation.n_frames": 3000,
                                "simulation.observe_every": 10})
    folder = ensure_dataset(cfg, tmp_path)
    data, truth = load_training_data(folder), load_ground_truth(folder)
    a = conserved_law_slopes(*finite_differences(data), data.stoich.S)
    # the end-point interpolation is not exact where a concentration moves fast within the
    # 10 Euler steps: most metabolites within a few percent, the median within 5%
    assert np.median(np.abs(a / -truth.lam - 1)) < 0.05


def test_conserved_law_offsets_are_shared_by_metabolites_of_one_slope(quick_data):
    """A weak law or a poor Phase 1 leaves single metabolites' residual offsets off by one or
    two times the true offset (weak_laws), which puts them on the other type's curve. With
    offsets "slope_group" each metabolite takes the median offset of the metabolites whose
    conserved-total slope matches its own, so a few shifted residuals get the true line back;
    with "metabolite" they keep their own (wrong) offset."""
    import torch

    from metabolism.strategies import conserved_law_targets

    _, data, truth, x, _ = quick_data
    law = -truth.lam * (x - truth.baseline)
    assert len(np.unique(truth.lam)) >= 2  # slopes that must not be pooled together
    shifted = np.zeros(x.shape[1])
    for lam in np.unique(truth.lam):  # a third of each type, offset by 1.5x its true offset
        members = np.where(truth.lam == lam)[0]
        shifted[members[: len(members) // 3]] = 1.5 * lam * truth.baseline[members[0]]
    assert (shifted != 0).any()
    residual = torch.as_tensor(law + shifted)
    pooled, applied, groups = conserved_law_targets(data, torch.as_tensor(x), residual,
                                                    "slope_group")
    assert applied
    np.testing.assert_allclose(pooled.numpy(), law, atol=1e-9)
    # one group per law: the groups are the types, whatever their numbering
    same_group = groups.numpy()[:, None] == groups.numpy()[None, :]
    np.testing.assert_array_equal(same_group, truth.lam[:, None] == truth.lam[None, :])
    own, _, no_groups = conserved_law_targets(data, torch.as_tensor(x), residual, "metabolite")
    np.testing.assert_allclose(own.numpy(), law + shifted, atol=1e-9)
    assert no_groups is None  # a law per metabolite: none shared by construction


def test_slope_groups_partition_the_sorted_slopes_at_gaps_above_the_tolerance():
    """A group is a run of sorted slopes whose neighbours are within the tolerance, so that
    every member of a law gets the same median line (windows around each slope need not
    agree on who is in)."""
    from metabolism.strategies import slope_groups

    a = np.array([1.0, 3.0, 1.0 + 4e-9, 2.0, 3.0 - 1e-9, 1.0 + 8e-9])
    ids = slope_groups(a, 5e-9)
    assert len(np.unique(ids)) == 3  # 1, 1+4e-9, 1+8e-9 chain into one group
    assert ids[0] == ids[2] == ids[5] and ids[1] == ids[4] and len({ids[0], ids[1], ids[3]}) == 3
    assert len(np.unique(slope_groups(a, 3e-9))) == 5  # the chain breaks at gaps of 4e-9


def test_learned_law_error_reads_the_result_against_the_conserved_totals(quick_data, tmp_path):
    """The data-only check of a trained run: slopes on the true law give ~0, a law 0.7x too
    shallow gives 0.3 (above the 0.2 limit), and noisy data give no number."""
    from metabolism.phase1_quality import learned_law_error

    _, data, truth, _, _ = quick_data
    assert learned_law_error(-truth.lam, data) < 1e-6
    assert learned_law_error(-0.7 * truth.lam, data) == pytest.approx(0.3, rel=1e-4)
    assert learned_law_error(-0.7 * truth.lam, data) > MAX_LAW_ERROR
    cfg = load_config("slot0", {**QUICK_OVERRIDES, "simulation.observation_noise": 0.01})
    noisy = load_training_data(ensure_dataset(cfg, tmp_path))
    assert np.isnan(learned_law_error(-truth.lam, noisy))
