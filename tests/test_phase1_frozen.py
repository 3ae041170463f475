"""Phase 2 never changes a Phase 1 tensor (bitwise), whatever strategies run."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import ALL_STRATEGIES, tiny_dict
from metabolism.config import config_from_dict
from metabolism.data import dataset_dir, load_training_data
from metabolism.experiment import load_phase1_model
from metabolism.phase2 import train_phase2

COMBOS = {
    "baseline": {},
    "residual+amplification": {k: ALL_STRATEGIES[k] for k in
                               ("residual_supervision", "amplification")},
    "contrastive+isolation+multiscale": {k: ALL_STRATEGIES[k] for k in
                                         ("contrastive", "gradient_isolation", "multiscale")},
    "curriculum+lr+accumulation": {k: ALL_STRATEGIES[k] for k in
                                   ("curriculum", "lr_schedule", "gradient_accumulation")},
    "all": ALL_STRATEGIES,
}


def _snapshot(model) -> dict[str, torch.Tensor]:
    snap = {k: v.detach().clone() for k, v in model.phase1_state().items()}
    for name in ("S", "substrate_index", "substrate_coeff", "concentration_scale"):
        snap[name] = getattr(model, name).detach().clone()
    return snap


@pytest.mark.parametrize("combo", list(COMBOS))
def test_phase1_tensors_bitwise_unchanged(tiny_phase1, combo):
    cfg0, data_root, ckpt, _ = tiny_phase1
    d = tiny_dict()
    d["training"]["strategies"] = copy.deepcopy(COMBOS[combo])
    cfg = config_from_dict(d)
    assert cfg.hash_of("simulation", "model", "phase1") == cfg0.hash_of(
        "simulation", "model", "phase1")
    data = load_training_data(dataset_dir(cfg, data_root))
    model = load_phase1_model(ckpt, data, cfg)

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    before = _snapshot(model)
    assert set(model.phase1_state()) == {k for k in saved if k.startswith(("log10_k", "mlp_sub."))}
    for k, v in model.phase1_state().items():  # loaded exactly from the checkpoint
        assert torch.equal(v, saved[k]), k
    node_before = {k: v.detach().clone() for k, v in model.mlp_node.state_dict().items()}
    emb_before = model.embeddings.detach().clone()

    train_phase2(model, data, cfg.training, progress=False)

    after = _snapshot(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"Phase 1 tensor {k} changed in Phase 2"
    for p in model.phase1_parameters():
        assert not p.requires_grad
        assert p.grad is None
    changed = [k for k, v in model.mlp_node.state_dict().items()
               if not torch.equal(v, node_before[k])]
    assert changed, "MLP_node was not trained"
    assert not torch.equal(model.embeddings.detach(), emb_before), "embeddings were not trained"
