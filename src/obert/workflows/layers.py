"""``obert drop-layers``: a smaller copy of a model with a chosen subset of its encoder layers."""

from __future__ import annotations

from obert import __version__
from obert.compression.layers import PAPER_KEEP, check_keep, default_keep, drop_layers, layer_stack
from obert.io import atomic_output, check_output, save_model
from obert.models import load_for_inference, load_tokenizer
from obert.sparsity import sparsity_report
from obert.workflows.common import log, targets_or_none


def run_drop_layers(model_name: str, output: str, keep: list[int] | None = None,
                    layers: int | None = None, overwrite: bool = False) -> list[int]:
    """Keep ``keep`` (or ``layers`` layers chosen by ``default_keep``) and write a plain HF
    folder with the model's own class, head and tokenizer. Returns the kept indices."""
    check_output(output, overwrite, inputs=[model_name])
    tokenizer = load_tokenizer(model_name)
    model = load_for_inference(model_name)
    n = len(layer_stack(model)[1])
    if keep is None:
        keep = default_keep(n, layers)
        rule = "the paper's (PAPER.md §5)" if (n, layers) in PAPER_KEEP else \
            "first, last and evenly spaced"
    else:
        rule = "given"
    check_keep(keep, n)
    drop_layers(model, keep)
    info = {**sparsity_report(targets_or_none(model)), "method": "drop-layers",
            "layers": {"kept": keep, "from": n, "rule": rule},
            "obert_version": __version__, "source_model": model_name}
    with atomic_output(output, overwrite, log, "drop-layers", [model_name]) as tmp:
        save_model(model, tokenizer, tmp, info)
    log(f"wrote {output}: layers {keep} of {n} ({rule})")
    return keep
