"""Find the weights to prune: the encoder's Linear layers, by module role.

By default a target is an ``nn.Linear`` inside a numbered transformer layer
(``...layer.3.attention.self.query``). That covers BERT, RoBERTa, MiniLM, ELECTRA and DistilBERT
(``transformer.layer.N``) without listing architectures. Embeddings, pooler and task head are
outside the layer stack and so excluded, unless ``include`` asks for them.
"""

from __future__ import annotations

import re

from torch import nn

from obert.errors import ObertError

LAYER_STACK = re.compile(r"(^|\.)(layer|layers|block|blocks)\.\d+\.")

# Suffix of the module name -> role, for BERT-like and DistilBERT-like naming.
ROLES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_output",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "attention.q_lin": "query",
    "attention.k_lin": "key",
    "attention.v_lin": "value",
    "attention.out_lin": "attn_output",
    "ffn.lin1": "intermediate",
    "ffn.lin2": "output",
}


def role_of(module_name: str) -> str:
    for suffix, role in ROLES.items():
        if module_name.endswith(suffix):
            return role
    return "other"


def find_targets(
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None
) -> dict[str, nn.Linear]:
    """Map module name -> Linear to prune, in model order.

    ``include``: regexes (searched in the module name) that add Linears anywhere, e.g.
    ``classifier`` or ``pooler``; ``exclude``: regexes that remove matches, e.g. ``query|key``.
    """
    inc = [re.compile(p) for p in include or []]
    exc = [re.compile(p) for p in exclude or []]
    found: dict[str, nn.Linear] = {}
    excluded = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        wanted = bool(LAYER_STACK.search(name)) or any(p.search(name) for p in inc)
        if wanted and any(p.search(name) for p in exc):
            excluded += 1
        elif wanted:
            found[name] = mod
    if not found and excluded:
        raise ObertError(
            f"{type(model).__name__} has no prunable layers left: --exclude removed all "
            f"{excluded} candidates; loosen the --exclude patterns"
        )
    if not found:
        raise ObertError(
            f"{type(model).__name__} has no prunable layers: no nn.Linear inside a numbered "
            "layer stack matched; pass --include REGEX to choose modules by name"
        )
    return found


def check_group_shape(targets: dict[str, nn.Linear], k: int, fix: str) -> None:
    """Refuse a target whose input dimension is not a multiple of the group size ``k``."""
    for name, mod in targets.items():
        if mod.in_features % k:
            raise ObertError(f"{name} has {mod.in_features} inputs, not a multiple of {k}: {fix}")
