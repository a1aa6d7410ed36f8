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


def test_fisher_inv_float32_default_on_well_conditioned_blocks():
    torch.manual_seed(0)
    grads = torch.randn(200, 150) * 1e-2
    ours = fisher_inv(grads, 1e-4, 50)
    assert ours.dtype == torch.float32
    assert rel_err(ours, dense_reference(grads.double(), 1e-4, 50)) < 1e-4


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
        assert fisher_memory_bytes(d, b) == 4 * nb * b * b
    f = EmpiricalFisher(1000, 32, 1e-4)
    assert f.ggt.numel() * 4 == fisher_memory_bytes(1000, 32)
    # the paper's figure: BERT-base at B=50 is about 17.0 GB
    assert abs(fisher_memory_bytes(84_934_656, 50) / 1e9 - 17.0) < 0.05


def test_blocks_round_trip():
    x = torch.arange(21.0).view(3, 7)
    xb = to_blocks(x, 5)
    assert xb.shape == (5, 5) and xb.reshape(-1)[21:].eq(0).all()
    assert torch.equal(from_blocks(xb, x.shape), x)
