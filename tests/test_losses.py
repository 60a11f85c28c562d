import math

import pytest
import torch

from fastret.train.losses import anchor_loss, biohicl_loss, contrastive_loss, mse_loss

SIM_E = torch.tensor([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
SIM_L = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])


def test_mse_by_hand():
    # off-diagonal differences: (0.8-0.5), (0.1-0), (0.3-0.2), twice each
    expected = 2 * (0.3**2 + 0.1**2 + 0.1**2) / 6
    assert mse_loss(SIM_E, SIM_L).item() == pytest.approx(expected)


def test_mse_leaves_out_unlabelled_documents():
    labelled = torch.tensor([True, True, False])
    assert mse_loss(SIM_E, SIM_L, labelled).item() == pytest.approx(0.3**2)


def test_contrastive_by_hand():
    tau, beta = 0.5, 0.3
    # positives (SimL > 0.3): (0,1) and (1,0); negatives (SimL == 0): (0,2) and (2,0); (1,2) ignored
    anchor0 = -0.5 * math.log(math.exp(0.8 / tau) / (math.exp(0.8 / tau) + math.exp(0.1 / tau)))
    anchor1 = -0.5 * math.log(1.0)  # anchor 1 has no negative
    expected = (anchor0 + anchor1) / 2
    assert contrastive_loss(SIM_E, SIM_L, beta=beta, tau=tau).item() == pytest.approx(expected)


def test_no_positive_pair_gives_zero_not_nan():
    sim_l = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    sim_e = torch.tensor([[1.0, 0.9], [0.9, 1.0]], requires_grad=True)
    loss = contrastive_loss(sim_e, sim_l)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(sim_e.grad).all()


def test_total_combines_parts_and_is_differentiable():
    sim_e = SIM_E.clone().requires_grad_(True)
    total, parts = biohicl_loss(sim_e, SIM_L, lambda_con=0.1, beta=0.3, tau=0.05)
    assert parts["loss"] == pytest.approx(parts["mse"] + 0.1 * parts["contrastive"])
    total.backward()
    assert torch.isfinite(sim_e.grad).all() and sim_e.grad.abs().sum() > 0


def test_contrastive_is_stable_at_small_tau():
    sim_e = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
    sim_l = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.isfinite(contrastive_loss(sim_e, sim_l, tau=1e-3))


def test_bad_shapes_and_tau():
    with pytest.raises(ValueError, match=r"must both be square \[B, B\]"):
        mse_loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="tau must be > 0"):
        contrastive_loss(SIM_E, SIM_L, tau=0.0)


def test_anchor_by_hand():
    scores = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.7, 0.0]], requires_grad=True)
    base = torch.tensor([[0.8, 0.2, 0.3], [0.3, 0.7, 0.0]])
    loss = anchor_loss(scores, base)
    assert loss.item() == pytest.approx((0.1**2 + 0.2**2) / 6)
    loss.backward()
    assert scores.grad[1].abs().sum() == 0 and scores.grad[0, 0] > 0 and scores.grad[0, 2] < 0


def test_anchor_without_queries_is_zero_and_checks_shapes():
    scores = torch.zeros(0, 4, requires_grad=True)
    loss = anchor_loss(scores, torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match=r"must both be \[Q, B\]"):
        anchor_loss(torch.zeros(2, 3), torch.zeros(3, 2))
