"""Training is equivariant to relabelling the metabolites: no code path can use an index.

Types were contiguous blocks of indices in the seed's default regime, so anything that reads a
metabolite's index could read its type. Here the training data are permuted (columns of the
concentrations, rows of S, the substrate indices of every reaction) and Phase 2 is trained in
float64 with every strategy on, starting from the same initial embeddings in permuted order:
the trained embeddings, MLP_node and the learned curves must be the originals, permuted, to
within float64 summation-order noise (relative 1e-9).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import ALL_STRATEGIES, tiny_dict
from metabolism.config import config_from_dict
from metabolism.data import TrainingData, dataset_dir, load_training_data
from metabolism.experiment import load_phase1_model
from metabolism.network import Stoichiometry
from metabolism.phase2 import train_phase2

RTOL, ATOL = 1e-9, 1e-12


def permute_metabolites(data: TrainingData, perm: np.ndarray) -> TrainingData:
    """The same system with metabolite perm[i] renamed i (reactions keep their order)."""
    inverse = np.argsort(perm)
    st = data.stoich
    # padded substrate slots (coefficient 0) point at metabolite 0 and contribute a factor 1
    stoich = Stoichiometry(S=st.S[perm], substrate_index=inverse[st.substrate_index],
                           substrate_coeff=st.substrate_coeff)
    return TrainingData(concentrations=data.concentrations[:, perm], delta_t=data.delta_t,
                        stoich=stoich)


def _train(ckpt, data, cfg, init_embeddings=None):
    model = load_phase1_model(ckpt, data, cfg).double()
    initial = model.embeddings.detach().clone()
    if init_embeddings is not None:
        with torch.no_grad():
            model.embeddings.copy_(init_embeddings)
    res = train_phase2(model, data, cfg.training, progress=False)
    return model, initial, res


@pytest.fixture(scope="module", params=["residual", "conserved_law"])
def trained_pair(tiny_phase1, request):
    """Trained on the data and on a relabelling of them, learning from the residual or (the
    slot configs') from the conserved-law lines, whose offsets are pooled over metabolites."""
    cfg0, data_root, ckpt, _ = tiny_phase1
    d = tiny_dict()
    d["training"]["strategies"] = copy.deepcopy(ALL_STRATEGIES)
    d["training"]["strategies"]["residual_supervision"]["target"] = request.param
    if request.param == "conserved_law":  # refused with it (config._check_strategies)
        d["training"]["strategies"]["contrastive"]["init_from_data"] = 0.0
    d["training"]["node_output_scale"] = "residual"  # read from the data: must permute too
    cfg = config_from_dict(d)
    data = load_training_data(dataset_dir(cfg0, data_root))
    perm = np.random.default_rng(11).permutation(data.concentrations.shape[1])
    permuted = permute_metabolites(data, perm)
    model_a, init_a, res_a = _train(ckpt, data, cfg)
    model_b, init_b, res_b = _train(ckpt, permuted, cfg, init_embeddings=init_a[perm])
    return data, permuted, perm, (model_a, init_a, res_a), (model_b, init_b, res_b)


def test_permuted_data_is_the_same_system(trained_pair):
    """The helper renames metabolites and nothing else: the true reaction dc/dt permutes."""
    data, permuted, perm, _, _ = trained_pair
    from metabolism.simulate import reaction_rates

    log10_k = np.linspace(-2, -1, data.stoich.n_reactions)
    c = data.concentrations[::7]
    v_a = reaction_rates(c, data.stoich, log10_k) @ data.stoich.S.T
    v_b = reaction_rates(c[:, perm], permuted.stoich, log10_k) @ permuted.stoich.S.T
    np.testing.assert_allclose(v_b, v_a[:, perm], rtol=1e-12, atol=1e-15)


def test_training_is_equivariant_to_metabolite_order(trained_pair):
    data, _, perm, (model_a, _, res_a), (model_b, _, res_b) = trained_pair
    assert not np.array_equal(perm, np.arange(len(perm)))
    emb_a = model_a.embeddings.detach()
    emb_b = model_b.embeddings.detach()
    assert not torch.allclose(emb_a, emb_a[perm])  # the test would notice a mix-up
    torch.testing.assert_close(emb_b, emb_a[perm], rtol=RTOL, atol=ATOL)
    for (name, pa), pb in zip(model_a.mlp_node.named_parameters(),
                              model_b.mlp_node.parameters()):
        torch.testing.assert_close(pb, pa, rtol=RTOL, atol=ATOL, msg=f"mlp_node.{name}")
    # the learned curves, on each metabolite's own data
    conc = torch.as_tensor(data.concentrations[::5], dtype=torch.float64)
    with torch.no_grad():
        curves_a, curves_b = model_a.node(conc), model_b.node(conc[:, perm])
    torch.testing.assert_close(curves_b, curves_a[:, perm], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(res_b.losses, res_a.losses, rtol=RTOL)
    assert np.ptp(res_a.losses) > 0  # training did move


def test_initial_embeddings_do_not_depend_on_the_data(trained_pair):
    """What the equivariance test holds fixed: the initial embeddings are one seeded draw,
    the same for any dataset of this size (so a run cannot start them from its data)."""
    _, _, _, (_, init_a, _), (_, init_b, _) = trained_pair
    torch.testing.assert_close(init_a, init_b, rtol=0, atol=0)
