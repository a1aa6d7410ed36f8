"""Layer dropping: keep a chosen subset of a BERT-like encoder's layers, renumbered.

The result is a plain Hugging Face model with a smaller ``num_hidden_layers`` (``n_layers`` for
DistilBERT) that ``from_pretrained`` loads without obert; the kept layers' weights are the
originals, bit for bit. Which layers to keep by default (PAPER.md §5): from 12 layers, 6 keep
0, 2, 4, 6, 8, 11 and 3 keep 0, 6, 11 (SparseML's BERT recipes; the first and last are always
kept). Any other pair keeps the first and last and spreads the rest evenly.
"""

from __future__ import annotations

import re

from torch import nn

from obert.errors import ObertError

# The paper's choices (PAPER.md §5), by (layers before, layers after).
PAPER_KEEP = {(12, 6): [0, 2, 4, 6, 8, 11], (12, 3): [0, 6, 11]}
_STACK = re.compile(r"(^|\.)(encoder\.layer|transformer\.layer|layers)$")


def layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's list of layers: ``…encoder.layer`` (BERT, RoBERTa, MiniLM, ELECTRA) or
    ``…transformer.layer`` (DistilBERT)."""
    found = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and _STACK.search(n)]
    if len(found) != 1:
        raise ObertError(f"{type(model).__name__}: found {len(found)} encoder layer lists "
                         "(want one named encoder.layer or transformer.layer); layer dropping "
                         "supports BERT-like encoders")
    return found[0]


def default_keep(n_from: int, n_to: int) -> list[int]:
    """The layers to keep going from ``n_from`` to ``n_to``: the paper's where it says, else
    the first, the last and the rest evenly spaced between them."""
    if n_to < 1 or n_to > n_from:
        raise ObertError(f"cannot keep {n_to} of {n_from} layers: choose 1 to {n_from}")
    if (n_from, n_to) in PAPER_KEEP:
        return list(PAPER_KEEP[n_from, n_to])
    if n_to == 1:
        return [0]
    return sorted({round(i * (n_from - 1) / (n_to - 1)) for i in range(n_to)})


def keep_problem(keep: list[int] | None, n_layers: int | None = None) -> str | None:
    """What is wrong with a list of layers to keep, or None: it must be non-empty, without
    negative indices or repeats, in increasing order, and (``n_layers`` known) in range. The
    one statement of the rule, for the CLI and for recipes."""
    if not keep:
        return "is empty: name at least one layer to keep, e.g. [0, 2, 5]"
    if n_layers is not None:
        bad = [i for i in keep if not 0 <= i < n_layers]
        if bad:
            return f"{bad[0]} is out of range: the model has layers 0 to {n_layers - 1}"
    if any(i < 0 for i in keep):
        return f"{keep} has a negative index: layers are numbered from 0"
    if len(set(keep)) != len(keep):
        return f"repeats a layer ({keep}): name each layer once"
    if keep != sorted(keep):
        return f"{keep} is not in increasing order: layers keep their order"
    return None


def check_keep(keep: list[int], n_layers: int, what: str = "--keep") -> list[int]:
    """``keep`` if ``keep_problem`` finds nothing, else ObertError naming ``what``."""
    problem = keep_problem(keep, n_layers)
    if problem:
        raise ObertError(f"{what} {problem}")
    return keep


def drop_layers(model: nn.Module, keep: list[int], what: str = "--keep") -> nn.Module:
    """Keep layers ``keep`` (indices into the current stack) in place; update the config.
    ``what`` names the input in errors (a flag or a recipe key)."""
    name, stack = layer_stack(model)
    check_keep(keep, len(stack), what)
    kept = nn.ModuleList(stack[i] for i in keep)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, kept)
    for i, layer in enumerate(kept):
        for sub in layer.modules():  # transformers 5 numbers attention layers for its cache
            if isinstance(getattr(sub, "layer_idx", None), int):
                sub.layer_idx = i
    model.config.num_hidden_layers = len(kept)  # DistilBERT maps it to n_layers
    return model
