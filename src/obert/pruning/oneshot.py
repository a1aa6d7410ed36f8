"""One-shot pruning of a model: settings, validation, the memory guard, recomputations."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from torch import Tensor, nn

from obert.errors import ObertError
from obert.pruning.gradients import collect_grads
from obert.pruning.pruner import OBSPruner, Pruner, build_pruner, sparsity_schedule
from obert.pruning.targets import find_targets

MASK_GROUP = {"unstructured": 1, "block4": 4}


@dataclass
class OneShotConfig:
    """Settings of ``obert oneshot``; defaults are the paper's (PAPER.md §2)."""

    sparsity: float
    method: str = "obert"
    mask: str = "unstructured"
    fisher_block_size: int = 50
    num_grads: int = 1024
    damp: float = 1e-7
    grad_batch_size: int = 16
    recomputations: int = 1
    scope: str = "global"
    max_fisher_memory_gb: float | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    @property
    def k(self) -> int:
        return MASK_GROUP[self.mask]

    def validate(self) -> OneShotConfig:
        if not 0.0 <= self.sparsity < 1.0:
            raise ObertError(f"--sparsity {self.sparsity} is outside [0, 1): use e.g. 0.8 for 80%")
        if self.method not in ("obert", "magnitude"):
            raise ObertError(f"--method {self.method!r} is unknown: use obert or magnitude")
        if self.mask not in MASK_GROUP:
            raise ObertError(f"--mask {self.mask!r} is unknown: use unstructured or block4")
        if self.scope not in ("global", "layer"):
            raise ObertError(f"--scope {self.scope!r} is unknown: use global or layer")
        if self.fisher_block_size < 1 or self.fisher_block_size % self.k:
            raise ObertError(
                f"--fisher-block-size {self.fisher_block_size} is not a positive multiple of "
                f"{self.k}, the group size of --mask {self.mask}: use e.g. 32"
            )
        for name, v in (("--num-grads", self.num_grads), ("--grad-batch-size", self.grad_batch_size),
                        ("--recomputations", self.recomputations)):
            if v < 1:
                raise ObertError(f"{name} {v} must be at least 1")
        if not self.damp > 0:
            raise ObertError(f"--damp {self.damp} must be positive: the paper uses 1e-7")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def check_group_shape(targets: dict[str, nn.Linear], k: int, fix: str) -> None:
    """Refuse a target whose input dimension is not a multiple of the group size ``k``."""
    for name, mod in targets.items():
        if mod.in_features % k:
            raise ObertError(f"{name} has {mod.in_features} inputs, not a multiple of {k}: {fix}")


def prepare(model: nn.Module, cfg: OneShotConfig) -> tuple[dict[str, nn.Linear], Pruner]:
    """Find the targets, check the group shape and the memory budget, build the pruner."""
    cfg.validate()
    targets = find_targets(model, cfg.include, cfg.exclude)
    check_group_shape(targets, cfg.k, "use --mask unstructured or --exclude it")
    weights = {n: m.weight for n, m in targets.items()}
    pruner = build_pruner(
        cfg.method, {n: w.data for n, w in weights.items()}, k=cfg.k,
        **({"block_size": cfg.fisher_block_size, "damp": cfg.damp} if cfg.method == "obert" else {}),
    )
    return targets, pruner


def fisher_memory_check(pruner: Pruner, cfg: OneShotConfig, log: Callable[[str], None]) -> None:
    """Print the Fisher estimate before allocation; refuse a run over ``max_fisher_memory_gb``."""
    if not isinstance(pruner, OBSPruner):
        return
    need = pruner.memory_bytes()
    n = sum(w.numel() for w in pruner.weights.values())
    if cfg.max_fisher_memory_gb is not None and need > cfg.max_fisher_memory_gb * 1e9:
        raise ObertError(
            f"the Fisher needs {human_bytes(need)} for {n:,} weights, over --max-fisher-memory "
            f"{cfg.max_fisher_memory_gb:g} GB: lower --fisher-block-size or raise the budget"
        )
    log(f"Fisher inverse: {human_bytes(need)} for {n:,} weights in {len(pruner.weights)} "
        f"tensors (B={cfg.fisher_block_size}, fp32)")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.2f} GB"


def oneshot_prune(
    model: nn.Module,
    cfg: OneShotConfig,
    batches: Iterable[dict[str, Tensor]] | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    prepared: tuple[dict[str, nn.Linear], Pruner] | None = None,
) -> dict[str, Tensor]:
    """Prune ``model`` in place to ``cfg.sparsity``; returns the masks by module name.

    With r recomputations the step is cut into r sub-steps at linearly interpolated sparsities,
    and oBERT re-estimates the Fisher with fresh gradients (at the updated weights) before each.
    """
    targets, pruner = prepared or prepare(model, cfg)
    fisher_memory_check(pruner, cfg, log)
    if pruner.needs_grads and batches is None:
        raise ValueError("oBERT needs gradient batches")
    weights = {n: m.weight for n, m in targets.items()}
    for i, s in enumerate(sparsity_schedule(pruner.sparsity(), cfg.sparsity, cfg.recomputations)):
        if isinstance(pruner, OBSPruner):
            pruner.begin()
            for grads in collect_grads(model, weights, batches, cfg.num_grads, quiet):
                pruner.add_grads(grads)
        pruner.step(s, cfg.scope)
        log(f"step {i + 1}/{cfg.recomputations}: sparsity {pruner.sparsity():.4f}")
    return pruner.masks
