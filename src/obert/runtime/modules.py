"""Inference modules that replace `nn.Linear`: obert's sparse kernels, or dense INT8 in obert's
scheme (``DenseInt8Linear``); PyTorch's dynamic INT8 only as the baseline users compare with."""

from __future__ import annotations

import threading
import warnings

import torch
from torch import nn

from obert.compression.quant import quantize_rows, quantize_tokens

from ._ext import kernels
from .pack import Packed, pack_f32, pack_i8

ACTS = {"none": 0, "gelu": 1}


def _rows(x: torch.Tensor, features: int) -> torch.Tensor:
    """x as the kernels take it: float32 [tokens, features] with unit inner stride (a view
    when it already is)."""
    x2 = x.reshape(-1, features)
    if x2.dtype != torch.float32:
        x2 = x2.float()
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


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
                    bs: int = 4, act: str = "none",
                    scale: torch.Tensor | None = None) -> SparseLinear:
        """Pack a dense [out, in] weight with exact zeros (INT8: always 4-blocks, per-row
        ``scale`` if given, else max|W[n]|/127)."""
        w = weight.detach()
        packed = pack_f32(w, bs) if dtype == "fp32" else pack_i8(w, scale)
        return cls(packed, bias, dtype, act)

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: str, bs: int = 4, act: str = "none",
                    scale: torch.Tensor | None = None) -> SparseLinear:
        return cls.from_weight(linear.weight, linear.bias, dtype, bs, act, scale)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """act(x Wᵀ + b), plus ``residual`` (shaped as the output) added last, in the kernel's
        epilogue, when given."""
        shape = x.shape
        x2 = _rows(x, self.in_features)
        r2 = None if residual is None else _rows(residual, self.out_features)
        k = kernels()
        if self.dtype_name == "fp32":
            y = k.spmm_f32(x2, self.row_ptr, self.col, self.val, self.bs, self.out_features,
                           self.bias, ACTS[self.act], r2)
        else:
            y = k.spmm_i8(x2, self.row_ptr, self.col, self.wq, self.sw, self.wsum,
                          self.out_features, self.bias, ACTS[self.act], r2)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{self.dtype_name}, block={self.bs}, density={self.density:.3f}, act={self.act}")


class FusedProjections(nn.Module):
    """Sibling projections of one input (attention's query, key, value) as one kernel call.

    The activations are laid out once and the kernel sees one wide matrix. Each projection is a
    `FusedPart` whose call returns its slice; the parts must be called with the same tensor
    (as attention does), and a new input, or the same one modified in place, recomputes.
    What one call has computed for its siblings is kept per thread (``threading.local``), never
    on the module: threads sharing one compiled model never see each other's projections.
    """

    def __init__(self, linear: SparseLinear, sizes: list[int]):
        super().__init__()
        self.linear, self.sizes = linear, list(sizes)
        self.bounds = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self._local = threading.local()

    def part(self, x: torch.Tensor, i: int) -> torch.Tensor:
        st = self._local
        # inference tensors carry no version counter; attention never edits its input anyway
        version = -2 if x.is_inference() else x._version
        if getattr(st, "x", None) is not x or st.version != version or st.left == 0:
            st.x, st.version = x, version
            st.y = self.linear(x)
            st.left = len(self.sizes)
        y = st.y[..., self.bounds[i]:self.bounds[i + 1]]
        st.left -= 1
        if st.left == 0:  # all parts served: drop the references
            st.x = st.y = None
        return y

    def __getstate__(self) -> dict:  # deepcopy / pickle: a fresh per-thread store
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


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


class DenseInt8Linear(nn.Module):
    """y = act(x Wᵀ + b) for a layer that stays dense, in obert's INT8 scheme
    (``obert.compression.quant``): per-row weight scales, per-token activation scales, exact
    int32 sums (``torch._int_mm``). The same numbers as the sparse INT8 kernel at full density,
    so QAT's fake quantization simulates these layers too."""

    def __init__(self, linear: nn.Linear, act: str = "none", scale: torch.Tensor | None = None):
        super().__init__()
        wq, sw = quantize_rows(linear.weight.detach().float().cpu(), scale)
        self.in_features, self.out_features, self.act = linear.in_features, linear.out_features, act
        self.register_buffer("wq_t", wq.t().contiguous())  # [in, out]: _int_mm's right operand
        self.register_buffer("sw", sw)
        b = None if linear.bias is None else linear.bias.detach().float().contiguous().clone()
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        q, sx = quantize_tokens(x.reshape(-1, self.in_features).float())
        y = torch._int_mm(q.to(torch.int8), self.wq_t).float() * sx * self.sw
        if self.bias is not None:
            y = y + self.bias
        if self.act == "gelu":
            y = nn.functional.gelu(y)
        if residual is not None:  # last, the order SparseLinear's epilogue adds it in
            y = y + residual.reshape(-1, self.out_features).float()
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 dense, "
                f"act={self.act}")


class Int8FeedForward(nn.Module):
    """A transformer layer's feed-forward block, GELU(x W1ᵀ + b1) W2ᵀ + b2, with both weights
    on the INT8 4-block kernels and run as one call (``ffn_i8``): the hidden activations pass
    from the first kernel to the second one token tile at a time, in cache, never as a
    [tokens, 4 · hidden] tensor. Exactly the numbers of the two SparseLinear calls it holds.
    It stands in for transformers' ``*Intermediate`` module; the layer's output Linear becomes
    an identity (``compile`` does both). With ``add_input`` the block's input is added to its
    output in the second kernel's epilogue: the residual the layer adds before its LayerNorm
    (``AddNorm`` then skips it)."""

    def __init__(self, fc1: SparseLinear, fc2: SparseLinear, add_input: bool = False):
        super().__init__()
        if fc1.dtype_name != "int8" or fc2.dtype_name != "int8" or fc1.act != "gelu":
            raise ValueError("Int8FeedForward takes two int8 SparseLinear, the first with GELU")
        if fc2.in_features != fc1.out_features:
            raise ValueError(f"fc2 takes {fc2.in_features} inputs, fc1 gives {fc1.out_features}")
        if add_input and fc2.out_features != fc1.in_features:
            raise ValueError(f"add_input needs fc2's {fc2.out_features} outputs to match "
                             f"fc1's {fc1.in_features} inputs")
        self.fc1, self.fc2, self.add_input = fc1, fc2, add_input
        self.out_features = fc2.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        a, b = self.fc1, self.fc2
        y = kernels().ffn_i8(_rows(x, a.in_features), a.row_ptr, a.col, a.wq, a.sw, a.wsum, a.out_features, a.bias,
                             b.row_ptr, b.col, b.wq, b.sw, b.wsum, b.out_features, b.bias,
                             self.add_input)
        return y.view(*shape[:-1], self.out_features)


class AddNorm(nn.Module):
    """A transformer block's output step, LayerNorm(dense(h) + input), with the residual added
    in the kernel's epilogue rather than as one more pass over the activations. It stands in for
    transformers' ``*SelfOutput`` / ``*Output`` (their dropout is the identity in inference).
    ``dense`` is None where the feed-forward block already added its input
    (``Int8FeedForward(add_input=True)``): then it is LayerNorm(h). The same float additions
    in the same order as the module it replaces, so the same numbers."""

    def __init__(self, dense: SparseLinear | DenseInt8Linear | None, norm: nn.LayerNorm):
        super().__init__()
        self.dense, self.LayerNorm = dense, norm  # transformers' attribute names

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        if self.dense is None:
            return self.LayerNorm(hidden_states)
        return self.LayerNorm(self.dense(hidden_states, residual=input_tensor))


class Int8SelfAttention(nn.Module):
    """A BERT-style self-attention (transformers' ``*SelfAttention``) whose QKᵀ, softmax and
    P·V run in obert's INT8 scheme on obert's kernel (``obert.compression.quant.int8_attention``,
    what QAT simulates), reading the projections' outputs in place: no per-head copies.

    ``qkv`` is one module for the three projections (output [tokens, 3 · hidden]) when they share
    an engine, else ``query``, ``key``, ``value`` are separate. Returns (output, None) as
    transformers' attention does without attention weights; the mask is the one transformers
    builds for its attention implementation (None, bool or additive float [B, 1, L, L]).
    """

    def __init__(self, heads: int, head_dim: int, scaling: float, qkv: nn.Module | None = None,
                 query: nn.Module | None = None, key: nn.Module | None = None,
                 value: nn.Module | None = None):
        super().__init__()
        if (qkv is None) == (query is None or key is None or value is None):
            raise ValueError("give either qkv or all of query, key and value")
        self.heads, self.head_dim, self.scaling = heads, head_dim, float(scaling)
        self.hidden = heads * head_dim
        self.qkv, self.query, self.key, self.value = qkv, query, key, value

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args, **kwargs) -> tuple[torch.Tensor, None]:
        b, length = hidden_states.shape[:2]
        x = hidden_states.reshape(b * length, -1)
        if self.qkv is not None:
            y = self.qkv(x)
            q, k, v = y[:, :self.hidden], y[:, self.hidden:2 * self.hidden], y[:, 2 * self.hidden:]
        else:
            q, k, v = self.query(x), self.key(x), self.value(x)
        mask = attention_mask
        if mask is not None and mask.dtype not in (torch.bool, torch.float32):
            mask = mask.float()
        out = kernels().attention_i8(q.float(), k.float(), v.float(), b, self.heads, mask,
                                     self.scaling)
        return out.view(b, length, self.hidden), None

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, int8 QK^T and P.V"


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Dense INT8 PyTorch, the baseline a user would reach for: every nn.Linear to dynamic int8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
