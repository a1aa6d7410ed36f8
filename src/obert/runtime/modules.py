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
    def from_linear(cls, linear: nn.Linear, dtype: str, bs: int = 4, act: str = "none"):
        w = linear.weight.detach()
        packed = pack_f32(w, bs) if dtype == "fp32" else pack_i8(w)
        return cls(packed, linear.bias, dtype, act)

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
