"""Pack a pruned weight into the kernels' blocked-CSR formats (see csrc/kernels.h).

Pure tensor code: a dense [out, in] weight with exact zeros in, index and value tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obert.compression.quant import quantize_rows  # the one INT8 scheme (QAT uses it too)

ROW_GROUP = 16  # the kernels' output tile; rows are padded to a multiple of it
COL_PAD = 16  # the kernels prefetch a few blocks ahead: col carries this many trailing zeros


@dataclass
class Packed:
    """A sparse weight ready for the kernels.

    `row_ptr[n]..row_ptr[n+1]` are row n's blocks; block j covers inputs col[j]..col[j]+bs-1.
    fp32: `val` [nnz_blocks * bs]. int8 (bs 4): `wq` (4 int8 per int32), per-row scale `sw`
    and `wsum`, the sum of the row's int8 weights.
    """

    out_features: int
    in_features: int
    bs: int
    row_ptr: torch.Tensor
    col: torch.Tensor
    val: torch.Tensor | None = None
    wq: torch.Tensor | None = None
    sw: torch.Tensor | None = None
    wsum: torch.Tensor | None = None

    @property
    def nnz_blocks(self) -> int:
        return int(self.row_ptr[-1])

    @property
    def density(self) -> float:
        """Fraction of the weight's multiply-adds the kernel performs (stored blocks x bs)."""
        return self.nnz_blocks * self.bs / max(1, self.out_features * self.in_features)


def _blocks(weight: torch.Tensor, bs: int) -> torch.Tensor:
    """[N, K] -> [N, ceil(K / bs), bs], zero-padded along K."""
    n, k = weight.shape
    pad = (-k) % bs
    w = torch.nn.functional.pad(weight, (0, pad)) if pad else weight
    return w.reshape(n, (k + pad) // bs, bs)


def _col(kb: torch.Tensor, bs: int) -> torch.Tensor:
    return torch.cat([kb * bs, torch.zeros(COL_PAD, dtype=kb.dtype)]).to(torch.int32)


def _row_ptr(nz: torch.Tensor) -> torch.Tensor:
    n = nz.shape[0]
    n_pad = -(-n // ROW_GROUP) * ROW_GROUP
    counts = torch.zeros(n_pad, dtype=torch.int64)
    counts[:n] = nz.sum(1)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(torch.int32)


def pack_f32(weight: torch.Tensor, bs: int = 1) -> Packed:
    """Keep every block of `bs` inputs that holds a nonzero (bs 1: single weights)."""
    if bs not in (1, 4):
        raise ValueError(f"block size must be 1 or 4, not {bs}")
    w = weight.detach().float().cpu()
    blocks = _blocks(w, bs)
    nz = blocks.ne(0).any(-1)
    rows, kb = nz.nonzero(as_tuple=True)
    return Packed(
        out_features=w.shape[0], in_features=w.shape[1], bs=bs, row_ptr=_row_ptr(nz),
        col=_col(kb, bs),
        val=blocks[rows, kb].reshape(-1).contiguous(),
    )


def pack_i8(weight: torch.Tensor, scale: torch.Tensor | None = None) -> Packed:
    """Int8 4-blocks along the input dimension, per-row scales (the VNNI layout); ``scale``:
    trained per-row scales (QAT) instead of max|W[n]|/127."""
    w = weight.detach().float().cpu()
    wq, sw = quantize_rows(w, scale)
    blocks = _blocks(wq, 4)
    nz = _blocks(w, 4).ne(0).any(-1)
    rows, kb = nz.nonzero(as_tuple=True)
    wq_blocks = blocks[rows, kb].contiguous()  # [nnz, 4] int8
    return Packed(
        out_features=w.shape[0], in_features=w.shape[1], bs=4, row_ptr=_row_ptr(nz),
        col=_col(kb, 4),
        wq=wq_blocks.view(torch.int32).reshape(-1).contiguous(),
        sw=sw.contiguous(), wsum=wq.sum(1, dtype=torch.int32).contiguous(),
    )


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """The fp32 weight the int8 kernel effectively multiplies by (for references and tests)."""
    wq, sw = quantize_rows(weight.detach().float().cpu())
    return wq.float() * sw[:, None]
