"""Find the weights to prune: the encoder's Linear layers, by module role; on request the
embeddings and the task head too.

By default a target is an ``nn.Linear`` inside a numbered transformer layer
(``...layer.3.attention.self.query``). That covers BERT, RoBERTa, MiniLM, ELECTRA and DistilBERT
(``transformer.layer.N``) without listing architectures. Embeddings, pooler and task head are
outside the layer stack and so excluded (the papers' targets, and 2312.13547's first guideline),
unless asked for: ``embeddings`` adds every ``nn.Embedding`` (word, position and token-type
tables, as SMC-Bench pruned them), ``head`` every Linear outside the layer stack (pooler and
classifier), ``include`` any Linear by name. A weight shared by two modules (an MLM decoder tied
to the word embeddings) is one target.
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
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None,
    embeddings: bool = False, head: bool = False,
) -> dict[str, nn.Module]:
    """Map module name -> module to prune (an ``nn.Linear``, or an ``nn.Embedding`` with
    ``embeddings``), in model order.

    ``include``: regexes (searched in the module name) that add Linears anywhere, e.g.
    ``classifier`` or ``pooler``; ``exclude``: regexes that remove matches, e.g. ``query|key``;
    ``embeddings``: every embedding table; ``head``: every Linear outside the layer stack.
    """
    inc = [re.compile(p) for p in include or []]
    exc = [re.compile(p) for p in exclude or []]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for p in inc:  # a typo would prune less than asked, silently
        if not any(p.search(n) for n in linears):
            raise ObertError(f"include pattern {p.pattern!r} (--include, recipe targets.include) "
                             f"matches no Linear of {type(model).__name__}: fix or drop it "
                             f"(its Linears: {layer_names(linears)})")
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    candidates: list[str] = []
    excluded = 0
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):  # head: every Linear, the layer stack's or not
            wanted = head or is_encoder_linear(name, mod) or any(p.search(name) for p in inc)
        else:
            wanted = embeddings and isinstance(mod, nn.Embedding)
        if not wanted or id(mod.weight) in seen:
            continue
        candidates.append(name)
        if any(p.search(name) for p in exc):
            excluded += 1
            continue
        seen.add(id(mod.weight))
        found[name] = mod
    for p in exc if candidates else ():  # a typo would prune what was meant to stay dense
        if not any(p.search(n) for n in candidates):
            raise ObertError(f"exclude pattern {p.pattern!r} (--exclude, recipe targets.exclude) "
                             f"matches none of the layers to prune: fix or drop it (they are: "
                             f"{layer_names(candidates)})")
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


def layer_names(names: list[str], limit: int = 12) -> str:
    """Module names for a message, the layer stack folded: ``bert.encoder.layer.N.{...}`` once
    with the distinct suffixes, at most ``limit`` names in all."""
    folded: dict[str, list[str]] = {}
    for name in names:
        m = LAYER_STACK.search(name)
        head = name[:m.end()] if m else name
        head = re.sub(r"\.\d+\.$", ".N.", head) if m else head
        rest = folded.setdefault(head, [])
        if m and name[m.end():] not in rest:
            rest.append(name[m.end():])
    parts = [head + ("{" + ", ".join(rest) + "}" if rest else "") for head, rest in folded.items()]
    shown = ", ".join(parts[:limit])
    return shown + (f", ... ({len(parts) - limit} more)" if len(parts) > limit else "") or "none"


def is_encoder_linear(name: str, module: nn.Module) -> bool:
    """An ``nn.Linear`` inside the numbered layer stack (the default targets)."""
    return isinstance(module, nn.Linear) and bool(LAYER_STACK.search(name))


def check_group_shape(targets: dict[str, nn.Module], k: int, fix: str) -> None:
    """Refuse a target whose rows (a Linear's inputs, an embedding's width) are not a multiple
    of the group size ``k``."""
    for name, mod in targets.items():
        width = mod.weight.shape[1]
        if width % k:
            raise ObertError(f"{name} has rows of {width} weights, not a multiple of {k}: {fix}")
