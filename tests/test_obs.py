"""OBS saliency and update: closed forms, the loss-change identity, exact zeros."""

import pytest
import torch

from obert.pruning.fisher import fisher_inv, to_blocks
from obert.pruning.obs import finv_diag_blocks, magnitude_saliency, obs_update, saliency


def setup(nb: int = 3, b: int = 8, m: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    grads = torch.randn(m, nb * b, dtype=torch.double)
    w = torch.randn(nb, b, dtype=torch.double)
    g = grads.view(m, nb, b)
    fisher = torch.einsum("mni,mnj->nij", g, g) / m + 1e-2 * torch.eye(b, dtype=torch.double)
    return w, fisher, torch.linalg.inv(fisher)


def test_single_weight_step_zeroes_it_and_loss_change_equals_saliency():
    w, fisher, finv = setup()
    rho = saliency(w, finv, 1)
    for blk, j in [(0, 0), (1, 5), (2, 7)]:
        prune = torch.zeros(3, 8, dtype=torch.bool)
        prune[blk, j] = True
        dw = obs_update(w, finv, prune, 1)
        assert abs(float((w + dw)[blk, j])) < 1e-12  # the update alone removes the weight
        assert dw[[i for i in range(3) if i != blk]].abs().max() == 0  # block-diagonal
        loss = 0.5 * dw[blk] @ fisher[blk] @ dw[blk]
        assert float(loss) == pytest.approx(float(rho[blk, j]), rel=1e-10)
        assert float(rho[blk, j]) == pytest.approx(float(w[blk, j] ** 2 / (2 * finv[blk, j, j])))


def test_block_saliency_closed_form_and_loss_change():
    w, fisher, finv = setup(b=12)
    k = 4
    rho = saliency(w, finv, k)
    assert rho.shape == (3, 3)
    for blk in range(3):
        for q in range(3):
            idx = slice(q * k, (q + 1) * k)
            wq = w[blk, idx]
            closed = 0.5 * wq @ torch.linalg.inv(finv[blk][idx, idx]) @ wq
            assert float(rho[blk, q]) == pytest.approx(float(closed), rel=1e-10)
            prune = torch.zeros(3, 3, dtype=torch.bool)
            prune[blk, q] = True
            dw = obs_update(w, finv, prune, k)
            assert (w + dw)[blk, idx].abs().max() < 1e-12
            # δw = −F⁻¹ E_Qᵀ ([F⁻¹]_QQ)⁻¹ w_Q, written out
            e = torch.zeros(12, k, dtype=torch.double)
            e[idx] = torch.eye(k, dtype=torch.double)
            ref = -finv[blk] @ e @ torch.linalg.solve(finv[blk][idx, idx], wq)
            assert torch.allclose(dw[blk], ref, rtol=1e-10, atol=1e-12)
            assert float(0.5 * dw[blk] @ fisher[blk] @ dw[blk]) == pytest.approx(float(closed), rel=1e-9)


def test_k1_group_equals_single_weight():
    w, _, finv = setup()
    assert torch.allclose(saliency(w, finv, 1), w**2 / (2 * finv.diagonal(dim1=1, dim2=2)))
    subs = finv_diag_blocks(finv, 2)
    assert torch.equal(subs[1, 2], finv[1, 4:6, 4:6])


def test_obs_beats_plain_zeroing():
    # Removing weight j by OBS never costs more (in the quadratic model) than zeroing it alone.
    w, fisher, finv = setup(seed=3)
    rho = saliency(w, finv, 1)
    plain = 0.5 * w**2 * fisher.diagonal(dim1=1, dim2=2)
    assert (rho <= plain + 1e-12).all()


def test_many_weights_sum_of_updates():
    w, _, finv = setup(seed=4)
    prune = torch.zeros(3, 8, dtype=torch.bool)
    prune[0, [1, 3]] = True
    prune[2, 6] = True
    total = obs_update(w, finv, prune, 1)
    parts = torch.zeros_like(w)
    for blk, j in prune.nonzero().tolist():
        one = torch.zeros_like(prune)
        one[blk, j] = True
        parts += obs_update(w, finv, one, 1)
    assert torch.allclose(total, parts)


def test_works_from_streamed_fisher_of_float32_gradients():
    torch.manual_seed(5)
    grads = torch.randn(64, 100) * 1e-3
    finv = fisher_inv(grads, 1e-7, 20)
    w = to_blocks(torch.randn(100) * 0.05, 20).to(finv.dtype)
    rho = saliency(w, finv, 4)
    assert torch.isfinite(rho).all() and (rho >= 0).all()


def test_magnitude_saliency():
    w = torch.tensor([[3.0, -4.0, 0.0, 1.0]])
    assert torch.equal(magnitude_saliency(w, 1), torch.tensor([[3.0, 4.0, 0.0, 1.0]]))
    assert torch.equal(magnitude_saliency(w, 2), torch.tensor([[5.0, 1.0]]))
