"""The block-diagonal empirical Fisher and its exact inverse (PAPER.md §1).

    F = λ·I + (1/m)·Σ_{i=1..m} g_i g_iᵀ

restricted to its B×B diagonal blocks: each target tensor is flattened row-major and cut into
⌈d/B⌉ consecutive blocks of B weights, the last one zero-padded. The inverse of each block is
exact. The paper's reference code reaches it by m rank-1 Woodbury updates from F₀⁻¹ = I/λ,

    F_i⁻¹ = F_{i−1}⁻¹ − (F_{i−1}⁻¹ g)(F_{i−1}⁻¹ g)ᵀ / (m + gᵀ F_{i−1}⁻¹ g),

which sweeps all of F⁻¹ through memory once per gradient. Here the gradients are streamed into
Σ g gᵀ a chunk at a time with one batched matrix product per chunk (the same multiply-adds, a
fraction of the memory traffic), and each block λI + GᵀG/m is then inverted by Cholesky in
float64. Both give the same matrix; tests check it.

GᵀG is accumulated in float64 by default, so every block stays positive semi-definite to
working precision and λI + GᵀG/m factorises. Should a factorisation still fail, or give an
inverse that is not finite (λ tiny against the gradients' scale: lost to rounding, the factor
has a zero on its diagonal), the block is retried with λ·10, λ·100, … and every retry is
recorded in ``EmpiricalFisher.failures`` for the caller to log: an indefinite or singular block
is never inverted. Settings refuse λ below ``DAMP_MIN`` (``obert.pruning.config``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

MAX_RETRIES = 8  # λ·10 … λ·10⁸ before a block is declared broken


def num_blocks(numel: int, block_size: int) -> int:
    return math.ceil(numel / block_size)


def fisher_memory_bytes(numels: list[int] | int, block_size: int, itemsize: int = 8) -> int:
    """Bytes held by the block-diagonal Fisher: ⌈d/B⌉·B² numbers per tensor (≈ 8·d·B in
    float64, the default accumulator; 4·d·B in float32)."""
    if isinstance(numels, int):
        numels = [numels]
    return sum(itemsize * num_blocks(d, block_size) * block_size**2 for d in numels)


def to_blocks(x: Tensor, block_size: int) -> Tensor:
    """Flatten row-major and cut into [⌈d/B⌉, B] blocks, zero-padding the last one."""
    flat = x.reshape(-1)
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block_size)


def from_blocks(xb: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_blocks`: drop the padding and restore ``shape``."""
    return xb.reshape(-1)[: math.prod(shape)].view(shape)


class EmpiricalFisher:
    """Streams gradients of one tensor into the block-diagonal Σ g gᵀ; ``fisher_inv`` inverts.

    Holds the [⌈d/B⌉, B, B] accumulator (float64 by default: 8·d·B bytes, twice the paper's
    fp32, so the sum stays positive semi-definite) and a buffer of ``chunk`` gradients. It
    never holds all m gradients at once. ``failures`` lists the blocks whose factorisation
    needed more damping than λ: ``{"block", "damp", "damp_used"}``.
    """

    def __init__(
        self,
        numel: int,
        block_size: int,
        damp: float,
        chunk: int = 4,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        self.numel, self.block_size, self.damp = numel, block_size, damp
        nb = num_blocks(numel, block_size)
        self.ggt = torch.zeros(nb, block_size, block_size, device=device, dtype=dtype)
        # [nb, B, chunk]: gradient c is column c of every block, so the flush multiplies
        # buf @ bufᵀ with no copy; the padding rows past d stay 0 forever.
        self._buf = torch.zeros(nb, block_size, chunk, device=device, dtype=dtype)
        self._n_buf = 0
        self.num_grads = 0
        self.failures: list[dict] = []

    def add_grad(self, grad: Tensor) -> None:
        """Add one gradient g (any shape with d elements); a NaN or ±inf in it is refused."""
        if not bool(torch.isfinite(grad).all()):
            bad = int((~torch.isfinite(grad)).sum())
            raise FloatingPointError(f"gradient {self.num_grads} has {bad} non-finite entries "
                                     "(the loss is NaN or overflowed on its batch)")
        flat = self._buf.view(-1, self._buf.shape[-1])[: self.numel, self._n_buf]
        flat.copy_(grad.detach().reshape(-1))
        self._n_buf += 1
        self.num_grads += 1
        if self._n_buf == self._buf.shape[-1]:
            self._flush()

    def _flush(self) -> None:
        if self._n_buf == 0:
            return
        g = self._buf[:, :, : self._n_buf]  # [nb, B, c]
        # Σ_c g_c g_cᵀ per block, as one batched [B, c] @ [c, B] product.
        self.ggt.baddbmm_(g, g.transpose(1, 2))
        self._n_buf = 0

    def fisher_inv(
        self, damp: float | None = None, keep: bool = False, inv_chunk: int = 128
    ) -> Tensor:
        """Return F⁻¹ per block, [⌈d/B⌉, B, B] in the accumulator's dtype, F = λI + GᵀG/m.

        Inverts in float64, ``inv_chunk`` blocks at a time (the temporaries stay small). By
        default it works in place of the accumulator, so the peak stays near the accumulator's
        own size, and the object takes no more gradients after. ``keep=True`` writes to a new
        tensor and keeps the accumulator, so one gradient pass can serve several ``damp``
        values (λ tuning).
        """
        if self.num_grads == 0:
            raise ValueError("no gradients were added")
        if self.ggt.numel() == 0 and self.numel > 0:
            raise RuntimeError("fisher_inv() already consumed this accumulator")
        self._flush()
        damp = self.damp if damp is None else damp
        ggt, m = self.ggt, self.num_grads
        out = torch.empty_like(ggt) if keep else ggt
        if not keep:
            self._buf = torch.empty(0)  # release the buffer before the inversion
            self.ggt = torch.empty(0)

        def invert(s: int) -> None:
            inv, failed = damped_inverse(
                ggt[s : s + inv_chunk].to(torch.float64, copy=True).div_(m), damp
            )
            out[s : s + inv_chunk] = inv
            self.failures.extend({**f, "block": s + f["block"]} for f in failed)

        starts = range(0, ggt.shape[0], inv_chunk)
        if ggt.device.type != "cpu":
            for s in starts:
                invert(s)
            return out
        # Batched small LAPACK calls do not use torch's intra-op threads well (see
        # ``_one_cpu_thread``), so run one single-threaded chunk per core instead.
        workers = torch.get_num_threads()  # read now: the caller may have changed it
        with _one_cpu_thread(ggt.device), ThreadPoolExecutor(workers) as pool:
            list(pool.map(invert, starts))
        self.failures.sort(key=lambda f: f["block"])
        return out


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Batched small LAPACK calls on CPU: torch's intra-op threading of ``cholesky_inverse`` was
    measured 100-700× slower with 2 threads than with 1 when another process shares the cores."""
    n = torch.get_num_threads()
    if device.type == "cpu" and n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def damped_inverse(ggt_over_m: Tensor, damp: float) -> tuple[Tensor, list[dict]]:
    """(λI + A)⁻¹ for a batch of symmetric PSD blocks A, by Cholesky.

    A block whose factorisation fails is retried from A with λ·10, λ·100, … (at most
    ``MAX_RETRIES`` times); it is never inverted by a general solver, which would hand an
    indefinite matrix's negative diagonal to the saliency. Returns the inverse and one
    ``{"block", "damp", "damp_used"}`` per retried block (``block`` indexes this batch).
    ``ggt_over_m`` is overwritten with λI + A (callers pass a temporary).
    """
    f = ggt_over_m
    f.diagonal(dim1=-2, dim2=-1).add_(damp)
    failures: list[dict] = []
    with _one_cpu_thread(f.device):
        chol, info = torch.linalg.cholesky_ex(f)
        bad = (info != 0) | ~_usable_factor(chol)
        # singular factors would make cholesky_inverse raise: invert the identity there
        chol[bad] = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
        inv = torch.cholesky_inverse(chol)
        bad |= ~torch.isfinite(inv).flatten(1).all(-1)
        for b in bad.nonzero().flatten().tolist():
            inv[b], used = _retry(f[b], damp)
            failures.append({"block": b, "damp": damp, "damp_used": used})
    return inv, failures


def _usable_factor(chol: Tensor) -> Tensor:
    """Per block: a Cholesky factor with a positive, finite diagonal (λ lost to rounding can
    leave a factorisation that "succeeds" with a zero pivot)."""
    d = chol.diagonal(dim1=-2, dim2=-1)
    return ((d > 0) & torch.isfinite(d)).all(-1)


def _retry(f: Tensor, damp: float) -> tuple[Tensor, float]:
    """Invert one block λI + A again with more damping: (A + λ'I)⁻¹ for λ' = λ·10^t."""
    eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
    used = damp
    for t in range(1, MAX_RETRIES + 1):
        used = damp * 10.0**t
        chol, info = torch.linalg.cholesky_ex(f + (used - damp) * eye)
        if int(info) == 0 and bool(_usable_factor(chol)):
            inv = torch.cholesky_inverse(chol)
            if bool(torch.isfinite(inv).all()):
                return inv, used
    raise FloatingPointError(
        f"a Fisher block is not positive definite, or its inverse not finite, even with "
        f"damping {used:g} (λ = {damp:g}): raise λ (--damp, the recipe's pruning.fisher.damp) "
        "or check the loss for NaN or overflow")


def fisher_inv(
    grads: Tensor, damp: float, block_size: int, chunk: int = 4, dtype: torch.dtype = torch.float64
) -> Tensor:
    """F⁻¹ per block from a stacked [m, d] gradient matrix (convenience for small inputs)."""
    fisher = EmpiricalFisher(grads[0].numel(), block_size, damp, chunk, grads.device, dtype)
    for g in grads:
        fisher.add_grad(g)
    return fisher.fisher_inv()
