"""The INT8 plan: what "the INT8 model" is, decided once from a model and read by QAT
(``prepare_qat``), ``obert.runtime.compile`` and the ONNX export (``obert.runtime.export``).

An ``Int8Plan`` says
- which Linears run in INT8 (``int8_linears``): the encoder's, as pruning finds them;
  embeddings, pooler and task head stay fp32;
- which self-attention modules compute QKᵀ and P·V in INT8 (``quant.int8_attention``): all of
  the model's or none. Every self-attention must be a BERT-style encoder one (absolute
  positions, query/key/value Linears in INT8) and the model must be able to switch its
  attention function (transformers' ``set_attn_implementation``), else none is, and
  ``attention_note`` says why: QAT never trains an attention that the runtime does not run;
- each INT8 Linear's per-row scale s_w: QAT's trained one (``quantization.safetensors`` beside
  the weights, or given) while the weights still sit on its grid (``quant.on_grid``), else
  max|W[n]|/127 from the weights, with a log line naming the layers whose scales were stale.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from obert.compression.quant import (
    FakeQuantLinear,
    on_grid,
    quantize_rows,
    simulate_int8_attention,
    swap_module,
)
from obert.errors import ObertError
from obert.sparsity import block4_cost

QKV = ("query", "key", "value")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def int8_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linears that run in INT8 (name -> module): the encoder's, as pruning finds them."""
    from obert.pruning.targets import find_targets

    try:
        return find_targets(model)
    except ObertError:
        raise ObertError(f"{type(model).__name__} has no encoder Linear layers to quantize "
                         "(none inside a numbered layer stack): INT8 needs a BERT-like "
                         "encoder") from None


def is_bert_self_attention(mod: nn.Module) -> bool:
    """A transformers encoder self-attention that INT8 attention stands in for: query, key,
    value Linears, integer heads, a float scaling, no decoder/causal use, absolute positions."""
    return (type(mod).__name__.endswith("SelfAttention")
            and all(isinstance(getattr(mod, a, None), nn.Linear) for a in QKV)
            and isinstance(getattr(mod, "num_attention_heads", None), int)
            and isinstance(getattr(mod, "attention_head_size", None), int)
            and isinstance(getattr(mod, "scaling", None), float)
            and not getattr(mod, "is_decoder", False) and not getattr(mod, "is_causal", False)
            and getattr(mod, "position_embedding_type", "absolute") == "absolute")


def _attention(model: nn.Module, linears: dict[str, nn.Linear]
               ) -> tuple[tuple[str, ...], str | None]:
    """(the self-attention modules that run INT8, why none does)."""
    found = [n for n, m in model.named_modules()
             if all(isinstance(getattr(m, a, None), nn.Linear) for a in QKV)]
    if not found:
        return (), "the model has no self-attention with query/key/value Linears"
    for name in found:
        mod = model.get_submodule(name)
        if not is_bert_self_attention(mod):
            return (), (f"{name} ({type(mod).__name__}) is not a BERT-style encoder "
                        "self-attention (absolute positions, no decoder)")
        if not all(f"{name}.{a}" in linears for a in QKV):
            return (), f"the projections of {name} are not all INT8 Linears"
    if getattr(model, "config", None) is None or not hasattr(model, "set_attn_implementation"):
        return (), "the model cannot switch its attention function, so QAT could not simulate it"
    return tuple(found), None


@dataclass(frozen=True)
class Int8Plan:
    """What runs in INT8 and with which weight scales (module docstring)."""

    linears: tuple[str, ...]
    attention: tuple[str, ...]
    scales: dict[str, Tensor] = field(repr=False)  # per-row s_w (float32, CPU) per Linear
    trained: tuple[str, ...] = ()  # Linears whose s_w are QAT's trained scales
    stale: tuple[str, ...] = ()  # trained scales refused: the weights left their grid
    scales_from: str | None = None  # where trained scales came from
    attention_note: str | None = None  # why no attention runs INT8

    def describe(self) -> dict:
        """A JSON-able summary for reports and ONNX metadata."""
        return {"linears": len(self.linears), "attention": len(self.attention),
                "attention_note": self.attention_note, "trained_scales": len(self.trained),
                "stale_scales": list(self.stale), "scales_from": self.scales_from}


def int8_plan(model: nn.Module, weight_scales: dict[str, Tensor] | None = None, *,
              attention: bool = True, log: Callable[[str], None] = _stderr) -> Int8Plan:
    """The INT8 plan of ``model`` as its weights are now. ``weight_scales`` (name -> s_w, as
    ``convert_qat`` returns them): trained scales to use; None: the ones in the local folder
    the model was loaded from, if any (``obert.io.weight_scales_of``); {}: none.
    ``attention`` False keeps every attention fp32."""
    from obert.io import QUANT_FILE, weight_scales_of

    linears = int8_linears(model)
    if attention:
        att, note = _attention(model, linears)
    else:
        att, note = (), "INT8 attention switched off"
    source = None
    if weight_scales is None:
        weight_scales = weight_scales_of(model) or {}
        if weight_scales:
            source = f"{model.config._name_or_path}/{QUANT_FILE}"
    elif weight_scales:
        source = "given"
    unknown = [k for k in weight_scales if k not in linears]
    if weight_scales and len(unknown) == len(weight_scales):  # another model's file
        raise ObertError(f"{source} names none of the model's INT8 Linears ({len(unknown)} "
                         f"scales, first: {unknown[0]}; the Linears are like {next(iter(linears))}"
                         "): it is another model's; remove it to use scales from the weights")
    if unknown:
        log(f"{len(unknown)} of {len(weight_scales)} trained INT8 weight scales ({source}) name "
            f"no INT8 Linear of the model (first: {unknown[0]}): ignored")
    scales, trained, stale = {}, [], []
    for name, lin in linears.items():
        w = lin.weight.detach().float().cpu()
        s = weight_scales.get(name)
        if s is not None:
            s = s.detach().float().cpu().reshape(-1)
            if s.numel() == w.shape[0] and on_grid(w, s):
                scales[name] = s
                trained.append(name)
                continue
            stale.append(name)
        scales[name] = quantize_rows(w)[1]
    if stale:
        log(f"{len(stale)} of {len(stale) + len(trained)} trained INT8 weight scales "
            f"({source}) no longer fit their weights, which changed since QAT (first: "
            f"{stale[0]}): those layers use scales from the weights")
    return Int8Plan(tuple(linears), att, scales, tuple(trained), tuple(stale), source, note)


def prepare_qat(model: nn.Module, plan: Int8Plan | None = None) -> Int8Plan:
    """Replace the plan's INT8 Linears by ``FakeQuantLinear`` on the same parameters and make
    the attention compute ``int8_attention`` when the plan's attention is INT8 (in place), as
    ``compile`` and the export deploy them; returns the plan. Idempotent."""
    plan = plan if plan is not None else int8_plan(model, {})
    for name in plan.linears:
        lin = model.get_submodule(name)
        if not isinstance(lin, FakeQuantLinear):
            swap_module(model, name, FakeQuantLinear.from_linear(lin))
    if plan.attention and not simulate_int8_attention(model, True):
        raise ObertError(f"{type(model).__name__} did not switch to INT8 attention: QAT "
                         "would not simulate what compile runs (report this with the model)")
    return plan


def int8_cost_note(model: nn.Module) -> str | None:
    """A line when unstructured sparsity is read by the INT8 kernels, which skip 4-blocks only:
    how many multiply-adds the sparsity saves, and how many the kernels still do."""
    kept, blocks = block4_cost(int8_linears(model))
    if kept == 1.0 or blocks <= 1.05 * kept:
        return None
    return (f"the INT8 kernels skip whole 4-blocks: these masks keep {kept:.1%} of the "
            f"encoder's weights but {blocks:.1%} of its 4-blocks, so INT8 runs "
            f"{blocks / max(kept, 1e-12):.2f}x the multiply-adds the sparsity implies (prune "
            "with mask block4 for the full INT8 speed-up)")
