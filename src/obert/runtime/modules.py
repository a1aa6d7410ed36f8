"""Inference modules that replace `nn.Linear`: obert's sparse kernels, or PyTorch's dense INT8."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ._ext import kernels
from .pack import Packed, pack_f32, pack_i8

ACTS = {"none": 0, "gelu": 1}


class SparseLinear(nn.Module):
    """y = act(x Wᵀ + b) with a pruned W, on obert's kernels (fp32 blocked CSR or int8 4-blocks).

    Inference only: the packed weight is a buffer, not a parameter, and no gradient flows.
    """

    def __init__(self, packed: Packed, bias: torch.Tensor | None, dtype: str, act: str = "none"):
        super().__init__()
        if dtype not in ("fp32", "int8"):
            raise ValueError(f"dtype must be 'fp32' or 'int8', not {dtype!r}")
        self.in_features, self.out_features = packed.in_features, packed.out_features
        self.dtype_name, self.bs, self.act = dtype, packed.bs, act
        self.density = packed.density
        self.register_buffer("row_ptr", packed.row_ptr)
        self.register_buffer("col", packed.col)
        if dtype == "fp32":
            self.register_buffer("val", packed.val)
        else:
            self.register_buffer("wq", packed.wq)
            self.register_buffer("sw", packed.sw)
            self.register_buffer("wsum", packed.wsum)
        b = None if bias is None else bias.detach().float().contiguous().clone()
        self.register_buffer("bias", b)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, dtype: str,
                    bs: int = 4, act: str = "none") -> SparseLinear:
        """Pack a dense [out, in] weight with exact zeros (INT8: always 4-blocks)."""
        w = weight.detach()
        packed = pack_f32(w, bs) if dtype == "fp32" else pack_i8(w)
        return cls(packed, bias, dtype, act)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: str, bs: int = 4,
                    act: str = "none") -> SparseLinear:
        return cls.from_weight(linear.weight, linear.bias, dtype, bs, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        k = kernels()
        if self.dtype_name == "fp32":
            y = k.spmm_f32(x2, self.row_ptr, self.col, self.val, self.bs, self.out_features,
                           self.bias, ACTS[self.act])
        else:
            y = k.spmm_i8(x2, self.row_ptr, self.col, self.wq, self.sw, self.wsum,
                          self.out_features, self.bias, ACTS[self.act])
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.dtype_name}, block={self.bs}, density={self.density:.3f}, act={self.act}")


class FusedProjections(nn.Module):
    """Sibling projections of one input (attention's query, key, value) as one kernel call.

    The activations are laid out once and the kernel sees one wide matrix. Each projection is a
    `FusedPart` whose call returns its slice; the parts must be called with the same tensor
    (as attention does), and a new input, or the same one modified in place, recomputes.
    """

    def __init__(self, linear: SparseLinear, sizes: list[int]):
        super().__init__()
        self.linear, self.sizes = linear, list(sizes)
        self.bounds = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._version = -1
        self._left = 0

    def part(self, x: torch.Tensor, i: int) -> torch.Tensor:
        # inference tensors carry no version counter; attention never edits its input anyway
        version = -2 if x.is_inference() else x._version
        if self._x is not x or self._version != version or self._left == 0:
            self._x, self._version = x, version
            self._y = self.linear(x)
            self._left = len(self.sizes)
        y = self._y[..., self.bounds[i]:self.bounds[i + 1]]
        self._left -= 1
        if self._left == 0:  # all parts served: drop the references
            self._x = self._y = None
        return y


class FusedPart(nn.Module):
    """One projection of a `FusedProjections` (registered once, on the parent)."""

    def __init__(self, fused: FusedProjections, index: int):
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a child: avoid three copies in state_dict
        self.index = index
        self.out_features = fused.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of the fused projection, out_features={self.out_features}"


class DenseAct(nn.Module):
    """A kept-dense linear whose activation was fused away from its parent: act(linear(x))."""

    def __init__(self, linear: nn.Module, act: str):
        super().__init__()
        self.linear, self.act = linear, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return nn.functional.gelu(y) if self.act == "gelu" else y


def dynamic_int8(linear: nn.Linear) -> nn.Module:
    """PyTorch's dynamic-quantized INT8 linear (fbgemm/onednn), for layers that stay dense."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as QLinear
        from torch.ao.quantization import default_dynamic_qconfig

        linear.qconfig = default_dynamic_qconfig
        q = QLinear.from_float(linear)
        del linear.qconfig
    return q


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Dense INT8 PyTorch, the baseline a user would reach for: every nn.Linear to dynamic int8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
