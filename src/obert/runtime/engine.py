"""A loaded model on obert's CPU kernels, as the commands that score or time it want it."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from obert.errors import ObertError


def compile_for(model: nn.Module, runtime: str, log: Callable[[str], None]
                ) -> tuple[nn.Module, dict]:
    """``model`` on obert's CPU kernels in ``runtime`` ("fp32" or "int8"), and what runs
    there: how many Linears on which engines, INT8 attentions, trained scales. INT8 wants
    AVX2 or AVX-512 VNNI: the scalar fallback is refused. INT8 follows the model's INT8 plan
    (``obert.compression.plan``), with a QAT model's trained scales while its weights fit
    them; a plan's notes (stale scales, fp32 attention, unstructured masks) go to ``log``."""
    import obert.runtime as rt
    from obert.compression.plan import int8_cost_note, int8_plan

    plan = None
    if runtime == "int8":
        if rt.available_isas()[0] == "scalar":
            raise ObertError("--runtime int8 needs AVX2 or AVX-512 VNNI, which this CPU lacks "
                             "(only the scalar reference kernels run here): use --runtime fp32")
        note = int8_cost_note(model)
        if note:
            log(note)
        plan = int8_plan(model, log=log)
        if plan.attention_note:
            log(f"attention stays fp32: {plan.attention_note}")
    model = rt.compile(model.cpu(), dtype=runtime, plan=plan)
    engines = [c.engine for c in model.obert_layers]
    return model, {"isa": rt.isa(), "linears": len(engines),
                   "sparse": sum(e.startswith("sparse") for e in engines),
                   "int8": sum(e.endswith("int8") for e in engines),
                   "int8_attention": len(model.obert_attention),
                   "trained_scales": model.obert_trained_scales}
