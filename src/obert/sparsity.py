"""How sparse a weight is, read in one place: exact zeros, and 4-blocks along the input.

Everything that reports or acts on sparsity (``sparsity.json``, ``compile``'s engine choice,
QAT's cost note, ``obert bench``) reads it from here.
"""

from __future__ import annotations

from torch import Tensor, nn


def sparsity_problem(s: float) -> str | None:
    """What is wrong with a sparsity (a fraction of weights pruned), or None: the one rule,
    for flags and recipes alike."""
    if not 0.0 <= s < 1.0:
        return f"{s} is outside [0, 1): use e.g. 0.8 for 80%"
    return None


def zeros(weight: Tensor) -> int:
    """The exact zeros of ``weight``."""
    return int(weight.detach().eq(0).sum())


def weight_stats(weight: Tensor) -> tuple[float, float]:
    """(unstructured density, 4-block density) of a [out, in] weight: the fraction of
    nonzeros, and of the 4-blocks along the input (zero-padded) holding a nonzero."""
    nz = weight.detach().ne(0)
    pad = (-nz.shape[1]) % 4
    nzb = nn.functional.pad(nz, (0, pad)).view(nz.shape[0], -1, 4).any(-1)
    return nz.float().mean().item(), nzb.float().mean().item()


def sparsity_report(targets: dict[str, nn.Module]) -> dict:
    """Per-tensor and global sparsity (fraction of exact zeros) of the modules' weights:
    what ``sparsity.json`` holds."""
    per = {}
    total_zeros = total = 0
    for name, mod in targets.items():
        w = mod.weight
        z = zeros(w)
        per[f"{name}.weight"] = {"shape": list(w.shape), "sparsity": z / w.numel(), "zeros": z}
        total_zeros, total = total_zeros + z, total + w.numel()
    return {"global_sparsity": total_zeros / total if total else 0.0, "num_weights": total,
            "num_zeros": total_zeros, "tensors": per}


def block4_cost(linears: dict[str, nn.Module]) -> tuple[float, float]:
    """(fraction of weights kept, fraction of 4-blocks kept) over ``linears`` together."""
    nz = nb = total = 0.0
    for lin in linears.values():
        d1, d4 = weight_stats(lin.weight)
        n = lin.weight.numel()
        nz, nb, total = nz + d1 * n, nb + d4 * n, total + n
    return (nz / total, nb / total) if total else (1.0, 1.0)


__all__ = ["block4_cost", "sparsity_problem", "sparsity_report", "weight_stats", "zeros"]
