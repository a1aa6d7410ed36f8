"""The block-diagonal Fisher inverse is exact: against a dense inverse and the Woodbury recursion."""

import pytest
import torch

from obert.pruning.fisher import (
    EmpiricalFisher,
    fisher_inv,
    fisher_memory_bytes,
    from_blocks,
    to_blocks,
)


def dense_reference(grads: torch.Tensor, damp: float, b: int) -> torch.Tensor:
    """inv(λI + GᵀG/m) per block, float64, from the whole gradient matrix at once."""
    g = torch.stack([to_blocks(x, b) for x in grads]).double()  # [m, nb, B]
    f = torch.einsum("mni,mnj->nij", g, g) / grads.shape[0] + damp * torch.eye(b, dtype=torch.double)
    return torch.linalg.inv(f)


def woodbury_reference(grads: torch.Tensor, damp: float, b: int) -> torch.Tensor:
    """PAPER.md §1: F_i⁻¹ = F_{i−1}⁻¹ − (F_{i−1}⁻¹g)(F_{i−1}⁻¹g)ᵀ / (m + gᵀF_{i−1}⁻¹g), F₀⁻¹ = I/λ."""
    m = grads.shape[0]
    nb = to_blocks(grads[0], b).shape[0]
    finv = torch.eye(b, dtype=torch.double).repeat(nb, 1, 1) / damp
    for x in grads:
        g = to_blocks(x, b).double().unsqueeze(-1)  # [nb, B, 1]
        fg = finv @ g
        finv -= fg @ fg.transpose(1, 2) / (m + g.transpose(1, 2) @ fg)
    return finv


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize(
    ("d", "b", "m", "chunk", "damp"),
    [(103, 10, 64, 16, 1e-3), (250, 50, 37, 5, 1e-4), (96, 32, 100, 7, 1e-2), (7, 4, 3, 16, 1e-1)],
)
def test_fisher_inv_matches_dense_inverse_and_woodbury(d, b, m, chunk, damp):
    torch.manual_seed(d + m)
    grads = torch.randn(m, d, dtype=torch.double) * 0.05
    ours = fisher_inv(grads, damp, b, chunk=chunk, dtype=torch.double)
    dense = dense_reference(grads, damp, b)
    wood = woodbury_reference(grads, damp, b)
    assert ours.shape == (-(-d // b), b, b)
    assert rel_err(ours, dense) < 1e-5
    assert rel_err(ours, wood) < 1e-5
    assert rel_err(wood, dense) < 1e-8  # the recursion is the same matrix


def test_fisher_inv_small_damp_in_float64():
    # λ = 1e-7 against gradients of 1e-3 scale, as in the paper's recipes.
    torch.manual_seed(0)
    grads = torch.randn(80, 200, dtype=torch.double) * 1e-3
    ours = fisher_inv(grads, 1e-7, 50, dtype=torch.double)
    assert rel_err(ours, dense_reference(grads, 1e-7, 50)) < 1e-5


def test_float64_accumulator_by_default_and_float32_on_request():
    torch.manual_seed(0)
    grads = torch.randn(200, 150) * 1e-2  # float32 gradients, as collected
    ours = fisher_inv(grads, 1e-4, 50)
    assert ours.dtype == torch.float64  # GᵀG summed in float64: stays PSD
    assert rel_err(ours, dense_reference(grads.double(), 1e-4, 50)) < 1e-10
    f32 = fisher_inv(grads, 1e-4, 50, dtype=torch.float32)
    assert f32.dtype == torch.float32
    assert rel_err(f32, dense_reference(grads.double(), 1e-4, 50)) < 1e-4


def test_failed_cholesky_is_retried_with_more_damping_and_recorded():
    # Block 1 of GᵀG/m made indefinite (an eigenvalue of −5e-4, as fp32 rounding of a large
    # sum can leave it): with λ = 1e-7 its Cholesky fails. It must not be inverted as it is but
    # retried with λ·10^t until it factorises, and recorded with the block and both λ.
    torch.manual_seed(3)
    grads = torch.randn(32, 40, dtype=torch.double)  # 8 chunks of 4: nothing left to flush
    f = EmpiricalFisher(40, 20, 1e-7, dtype=torch.double)
    for g in grads:
        f.add_grad(g)
    q = torch.linalg.qr(torch.randn(20, 20, dtype=torch.double)).Q
    bad = q @ torch.diag(torch.linspace(-5e-4, 1.0, 20, dtype=torch.double)) @ q.T
    f.ggt[1] = bad * f.num_grads
    finv = f.fisher_inv()
    assert f.failures == [{"block": 1, "damp": 1e-7, "damp_used": pytest.approx(1e-3)}]
    want = torch.linalg.inv(bad + 1e-3 * torch.eye(20, dtype=torch.double))
    assert rel_err(finv[1:2], want.unsqueeze(0)) < 1e-8
    assert rel_err(finv[0:1], dense_reference(grads[:, :20], 1e-7, 20)) < 1e-6
    assert (torch.linalg.eigvalsh(finv) > 0).all()  # positive definite: saliencies ≥ 0


def test_non_finite_gradient_is_refused():
    f = EmpiricalFisher(10, 5, 1e-3)
    g = torch.ones(10)
    g[3] = float("nan")
    with pytest.raises(FloatingPointError, match="1 non-finite"):
        f.add_grad(g)


def test_fewer_grads_than_block_is_still_exact():
    # m < B: GᵀG is singular, only λ keeps F invertible.
    torch.manual_seed(1)
    grads = torch.randn(5, 40, dtype=torch.double)
    ours = fisher_inv(grads, 1e-2, 20, dtype=torch.double)
    assert rel_err(ours, dense_reference(grads, 1e-2, 20)) < 1e-5


def test_streaming_holds_only_a_chunk_of_gradients():
    f = EmpiricalFisher(1000, 50, 1e-4, chunk=8, dtype=torch.double)
    assert f._buf.shape == (20, 50, 8)  # never m gradients
    torch.manual_seed(0)
    grads = torch.randn(30, 1000, dtype=torch.double)
    for g in grads:
        f.add_grad(g)
    assert f.num_grads == 30
    assert rel_err(f.fisher_inv(), dense_reference(grads, 1e-4, 50)) < 1e-5


def test_keep_allows_several_damps_from_one_pass():
    torch.manual_seed(2)
    grads = torch.randn(20, 60, dtype=torch.double)
    f = EmpiricalFisher(60, 20, 1e-3, dtype=torch.double)
    for g in grads:
        f.add_grad(g)
    for damp in (1e-1, 1e-3):
        assert rel_err(f.fisher_inv(damp, keep=True), dense_reference(grads, damp, 20)) < 1e-5
    f.fisher_inv()
    with pytest.raises(RuntimeError):
        f.fisher_inv()


def test_memory_estimate_is_the_accumulator_size():
    for d, b in [(7_077_888, 50), (1000, 32), (7, 4)]:
        nb = -(-d // b)
        assert fisher_memory_bytes(d, b) == 8 * nb * b * b
        assert fisher_memory_bytes(d, b, itemsize=4) == 4 * nb * b * b
    f = EmpiricalFisher(1000, 32, 1e-4)
    assert f.ggt.numel() * 8 == fisher_memory_bytes(1000, 32)
    # the paper's figure (fp32): BERT-base at B=50 is about 17.0 GB
    assert abs(fisher_memory_bytes(84_934_656, 50, itemsize=4) / 1e9 - 17.0) < 0.05


def test_blocks_round_trip():
    x = torch.arange(21.0).view(3, 7)
    xb = to_blocks(x, 5)
    assert xb.shape == (5, 5) and xb.reshape(-1)[21:].eq(0).all()
    assert torch.equal(from_blocks(xb, x.shape), x)
