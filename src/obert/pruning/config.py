"""How one pruning step is done: the one schema behind ``obert oneshot`` and a recipe's
``pruning:`` section (which adds the schedule, see ``obert.training.recipe``).

Validation lives here once. ``check(name)`` takes a namer that turns a field path
(``fisher.block_size``) into the words the user typed: a flag (``--fisher-block-size``) on the
command line, ``recipe key pruning.fisher.block_size =`` in a recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from obert.errors import ObertError
from obert.sparsity import sparsity_problem

MASK_GROUP = {"unstructured": 1, "block4": 4}
# The paper's Fisher block size B per mask (PAPER.md §2): 50 for single weights, 32 for 4-blocks.
FISHER_BLOCK = {"unstructured": 50, "block4": 32}
# The smallest Fisher dampening λ. F⁻¹ has entries up to 1/λ, and λ must survive float64
# rounding (2.2e-16 relative) against the Fisher's diagonal, the gradients' squares: below
# 1e-12 it is lost for squares above 1e-4 and the blocks' inverse stops being finite or
# meaningful (1e-300 inverts to inf). The paper uses 1e-7.
DAMP_MIN = 1e-12
METHODS = ("obert", "magnitude")
SCOPES = ("global", "layer")

Namer = Callable[[str], str]

CLI_FLAGS = {
    "method": "--method", "mask": "--mask", "scope": "--scope",
    "recomputations": "--recomputations", "fisher.num_grads": "--num-grads",
    "fisher.block_size": "--fisher-block-size", "fisher.damp": "--damp",
    "fisher.grad_batch_size": "--grad-batch-size", "fisher.max_memory_gb": "--max-fisher-memory",
}


def cli_name(path: str) -> str:
    """The command-line flag of a config field."""
    return CLI_FLAGS.get(path, "--" + path.split(".")[-1].replace("_", "-"))


@dataclass
class FisherConfig:
    """The empirical Fisher of each oBERT step (PAPER.md §2). ``block_size`` None takes the
    paper's B for the mask (50, or 32 for block4); ``max_memory_gb`` is a per-rank budget."""

    num_grads: int = 1024
    block_size: int | None = None
    damp: float = 1e-7
    grad_batch_size: int = 16
    max_memory_gb: float | None = None


@dataclass
class StepConfig:
    """One pruning step: the scorer, the group shape, the ranking scope and the Fisher."""

    method: str = "obert"
    mask: str = "unstructured"
    scope: str = "global"
    recomputations: int = 1
    fisher: FisherConfig = field(default_factory=FisherConfig)

    @property
    def k(self) -> int:
        """The group size: 1 weight, or 4 consecutive weights along the input dimension."""
        return MASK_GROUP[self.mask]

    @property
    def needs_grads(self) -> bool:
        return self.method == "obert"

    @property
    def block_size(self) -> int:
        """The Fisher block size B in use: the one given, else the paper's for the mask."""
        given = self.fisher.block_size
        return FISHER_BLOCK.get(self.mask, 50) if given is None else given  # 0 is no default

    def check(self, name: Namer = cli_name, error: type[ObertError] = ObertError) -> StepConfig:
        def need(ok: bool, path: str, msg: str) -> None:
            if not ok:
                raise error(f"{name(path)} {msg}")

        for path, value, allowed in (("method", self.method, METHODS),
                                     ("mask", self.mask, tuple(MASK_GROUP)),
                                     ("scope", self.scope, SCOPES)):
            need(value in allowed, path, f"{value!r} is not one of {', '.join(allowed)}")
        need(self.recomputations >= 1, "recomputations", f"{self.recomputations} must be ≥ 1")
        if not self.needs_grads:  # magnitude reads no Fisher: its settings cannot be wrong
            return self
        f = self.fisher
        need(f.num_grads >= 1, "fisher.num_grads", f"{f.num_grads} must be ≥ 1")
        need(f.grad_batch_size >= 1, "fisher.grad_batch_size", f"{f.grad_batch_size} must be ≥ 1")
        need(f.damp > 0, "fisher.damp", f"{f.damp} must be positive (the paper uses 1e-7)")
        need(f.damp >= DAMP_MIN, "fisher.damp", f"{f.damp:g} is below {DAMP_MIN:g}: a smaller λ "
             "is lost to float64 rounding against the gradients' squares and the Fisher's "
             "inverse is not finite; use e.g. 1e-7 (the paper's)")
        need(f.max_memory_gb is None or f.max_memory_gb > 0, "fisher.max_memory_gb",
             f"{f.max_memory_gb} must be positive")
        b = self.block_size
        need(b >= 1 and b % self.k == 0, "fisher.block_size",
             f"{b} must be a positive multiple of {self.k}, the group size of mask {self.mask} "
             f"(the paper uses {FISHER_BLOCK[self.mask]})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TargetsConfig:
    """Which weights are pruned beyond the encoder's Linears: the embedding tables
    (``embeddings``), the Linears outside the layer stack (``head``: pooler and classifier),
    Linears by name (``include``), or spared (``exclude``): regexes searched in module names
    (see ``obert.pruning.targets``). Both flags off is 2312.13547's first guideline."""

    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    embeddings: bool = False
    head: bool = False

    def check(self, name: Namer = cli_name, error: type[ObertError] = ObertError) -> TargetsConfig:
        import re

        for key in ("include", "exclude"):
            for p in getattr(self, key):
                try:
                    re.compile(p)
                except re.error as e:
                    raise error(f"{name(key)} {p!r} is not a valid regex ({e})") from None
        return self


def check_sparsity(s: float, name: str = "--sparsity") -> float:
    problem = sparsity_problem(s)
    if problem:
        raise ObertError(f"{name} {problem}")
    return s
