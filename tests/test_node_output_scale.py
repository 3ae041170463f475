"""MLP_node's output unit (training.node_output_scale): a reparametrisation that keeps the
function, changes how far one Adam update moves it, and is read from the data alone."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_dict
from metabolism import strategies as strat
from metabolism.config import ModelConfig, SimulationConfig, config_from_dict
from metabolism.data import dataset_dir, load_training_data
from metabolism.experiment import load_phase1_model
from metabolism.model import MetabolismModel
from metabolism.network import generate_network
from metabolism.phase2 import train_phase2

SEED = 5


def _model(seed: int = SEED) -> MetabolismModel:
    torch.manual_seed(seed)
    stoich, _ = generate_network(SimulationConfig(n_metabolites=12, n_reactions=20, seed=3))
    model = MetabolismModel(stoich, ModelConfig(hidden_dim_node=8, embedding_init_std=0.5),
                            concentration_scale=4.0).double()
    with torch.no_grad():  # a trained-looking MLP_node: its last layer is zero at the start
        for p in model.mlp_node.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def _c(n_rows: int = 9, n: int = 12, seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 8.0 * torch.rand(n_rows, n, generator=g, dtype=torch.float64)


def test_setting_the_scale_keeps_the_function():
    model = _model()
    c = _c()
    before = model.node(c).detach().clone()
    for scale in (3e-3, 0.25, 7.0):
        model.set_node_output_scale(scale)
        torch.testing.assert_close(model.node(c), before, rtol=1e-12, atol=1e-15)
        assert float(model.node_output_scale) == pytest.approx(scale)
        w, b = model.node_layers()[-1]
        last = model.mlp_node[-1]
        torch.testing.assert_close(w, last.weight * scale)
        torch.testing.assert_close(b, last.bias * scale)


def test_unit_one_is_the_seeds_parametrisation_exactly():
    """Unit 1 hands the kernels MLP_node's own last layer, not a product with 1: the configs
    that do not ask for a unit train bit for bit as before."""
    model = _model()
    w, b = model.node_layers()[-1]
    assert w is model.mlp_node[-1].weight and b is model.mlp_node[-1].bias


def test_a_checkpoint_keeps_its_unit():
    """The unit travels in the state dict: a fresh model loaded from it computes the same
    MLP_node."""
    trained = _model()
    trained.set_node_output_scale(4e-3)
    fresh = _model(seed=SEED + 1)
    fresh.load_state_dict(trained.state_dict())
    c = _c()
    torch.testing.assert_close(fresh.node(c), trained.node(c), rtol=0, atol=0)
    assert float(fresh.node_output_scale) == pytest.approx(4e-3)


@pytest.mark.parametrize("bad", [0.0, -1e-3, math.nan, math.inf])
def test_a_scale_that_is_not_a_positive_number_is_refused(bad):
    model = _model()
    with pytest.raises(ValueError, match="node output scale"):
        model.set_node_output_scale(bad)
    assert float(model.node_output_scale) == 1.0  # nothing half-changed


@pytest.mark.parametrize("scale", [1e-3, 1e-2])
def test_one_adam_update_moves_the_output_in_proportion_to_the_scale(scale):
    """Why the unit matters: from the zero last layer MLP_node starts with, Adam's first step
    moves every parameter by the learning rate whatever the gradient's size, so the output
    moves by lr-sized steps times the unit."""
    c = _c()
    moved = {}
    for s in (1.0, scale):
        model = _model()
        with torch.no_grad():
            model.mlp_node[-1].weight.zero_()
            model.mlp_node[-1].bias.zero_()
        model.set_node_output_scale(s)
        opt = torch.optim.Adam(model.mlp_node.parameters(), lr=1e-2)
        (model.node(c) - 1.0).pow(2).mean().backward()
        opt.step()
        moved[s] = model.node(c).detach()
    assert moved[1.0].abs().max() > 1e-3  # in dc/dt units one step moves by ~lr
    # (up to Adam's eps, 1e-8 against gradients of about the scale here)
    torch.testing.assert_close(moved[scale], scale * moved[1.0], rtol=1e-4, atol=1e-14)


def _cfg(mode: str):
    d = tiny_dict(**{"training.data_augmentation_loop": 3, "training.node_output_scale": mode})
    d["training"]["strategies"] = {"residual_supervision": {"enabled": True, "loss": "huber"}}
    return config_from_dict(d)


def test_phase2_learns_in_units_of_the_residual_targets(tiny_phase1):
    """'residual': the unit is the median |residual target| of this run's own data (no label
    is read); 'none' leaves it at 1, the seed's parametrisation."""
    _, data_root, ckpt, _ = tiny_phase1
    cfg = _cfg("residual")
    data = load_training_data(dataset_dir(cfg, data_root))
    model = load_phase1_model(ckpt, data, cfg)
    res = train_phase2(model, data, cfg.training, progress=False)
    _, y = strat.residual_targets(load_phase1_model(ckpt, data, cfg),
                                  torch.as_tensor(data.concentrations).float(), data.delta_t)
    expected = float(y.abs().median())
    assert expected > 0 and abs(expected - 1) > 1e-3  # not the default unit by chance
    assert res.node_output_scale == pytest.approx(expected, rel=1e-6)
    assert float(model.node_output_scale) == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(res.final_loss)

    plain = _cfg("none")
    model = load_phase1_model(ckpt, data, plain)
    assert train_phase2(model, data, plain.training, progress=False).node_output_scale == 1.0
    assert float(model.node_output_scale) == 1.0
