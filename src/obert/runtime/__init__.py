"""obert's sparse CPU runtime: C++ kernels for pruned linears and `compile(model)`.

    import obert.runtime as rt
    fast = rt.compile(model, dtype="int8")   # same forward, outputs and tokenizer
"""

from ._ext import available_isas, isa, kernels, set_isa
from .compile import MAX_DENSITY, LayerChoice, compile, summary
from .modules import (
    AddNorm,
    Int8FeedForward,
    Int8SelfAttention,
    SparseLinear,
    quantize_dynamic_int8,
)
from .pack import Packed, pack_f32, pack_i8

__all__ = [
    "MAX_DENSITY", "AddNorm", "Int8FeedForward", "Int8SelfAttention", "LayerChoice", "Packed", "SparseLinear", "available_isas",
    "compile", "isa",
    "kernels", "pack_f32", "pack_i8", "quantize_dynamic_int8", "set_isa", "summary",
]
