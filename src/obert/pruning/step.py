"""One pruning step, for any pruner, from one-shot and from the training loop alike.

``pruning_step`` prunes the targets of a ``MaskSet`` to a sparsity in r sub-steps at linearly
interpolated sparsities; oBERT re-estimates the Fisher with fresh gradients (at the updated
weights) before each (PAPER.md §1, "recomputations"). ``prune_each`` serves several one-shot
sparsities from one Fisher (r = 1). Over several ranks every rank calls them alike; they end
with a check that all ranks hold bitwise identical weights and masks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from obert.errors import ObertError
from obert.pruning.config import FISHER_BLOCK, Namer, StepConfig, cli_name
from obert.pruning.distributed import Comm, weights_digest
from obert.pruning.gradients import gradient_rounds
from obert.pruning.masks import MaskSet
from obert.pruning.pruner import Pruner, build_pruner, sparsity_schedule

Log = Callable[[str], None]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.2f} GB"


def fisher_memory_check(pruner: Pruner, cfg: StepConfig, log: Log,
                        name: Namer = cli_name) -> None:
    """Print this rank's Fisher memory before allocation; refuse it over the per-rank budget,
    over the memory free on its device, or with blocks larger than any target (all padding).
    ``name`` words a setting as the user gave it (a flag, or a recipe key)."""
    if not pruner.needs_grads:  # no Fisher
        return
    largest = max(w.numel() for w in pruner.weights.values())
    if cfg.block_size > largest:
        raise ObertError(
            f"{name('fisher.block_size')} {cfg.block_size} is larger than the largest target "
            f"tensor ({largest:,} weights): its blocks would be mostly zero padding (B² numbers "
            f"each); use at most {largest} (the paper uses {FISHER_BLOCK.get(cfg.mask, 50)})")
    need = pruner.memory_bytes()
    n = sum(w.numel() for w in pruner.weights.values())
    comm = pruner.comm
    per = f" per rank ({comm.world} ranks)" if comm.world > 1 else ""
    budget = cfg.fisher.max_memory_gb
    if budget is not None and need > budget * 1e9:
        raise ObertError(
            f"the Fisher needs {human_bytes(need)}{per} for {n:,} weights, over "
            f"--max-fisher-memory {budget:g} GB: lower --fisher-block-size, add ranks, or "
            "raise the budget")
    device = next(iter(pruner.weights.values())).device
    free = free_memory(device)
    if need > free:
        raise ObertError(
            f"the Fisher needs {human_bytes(need)}{per} for {n:,} weights (8·d·B bytes, "
            f"B={cfg.block_size}), more than the {human_bytes(free)} free on {device}: lower "
            f"{name('fisher.block_size')}, add ranks, or free memory")
    if comm.is_main:
        log(f"Fisher inverse: {human_bytes(need)}{per} for {n:,} weights in "
            f"{len(pruner.weights)} tensors (B={cfg.block_size}, float64)")


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: the GPU's free memory plus what torch's
    cache holds unused, or the host's available memory (psutil, an accelerate dependency)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    import psutil

    return psutil.virtual_memory().available


def estimate_fisher(pruner: Pruner, model: nn.Module, batches: Iterable, num_grads: int,
                    log: Log, quiet: bool = False) -> dict[str, Tensor]:
    """Feed ``num_grads`` gradients (split over the ranks) to a fresh Fisher and invert it;
    a factorisation that needed more damping is logged with its tensor, block and λ. For a
    pruner that ``needs_grads`` (``OBSPruner``: begin, add_grads, current_fisher_inv)."""
    comm = pruner.comm
    pruner.begin()
    try:
        with gradient_rounds(model, pruner.weights, batches, num_grads, comm.rank, comm.world,
                             quiet) as rounds:
            for grads in rounds:
                pruner.add_grads(grads)
        finv = pruner.current_fisher_inv()
    except FloatingPointError as e:  # a non-finite gradient, a block no damping can invert
        raise ObertError(f"the empirical Fisher cannot be used: {e}") from None
    for f in pruner.failures[:5]:
        log(f"rank {comm.rank}: Fisher block {f['block']} of {f['tensor']} failed Cholesky at "
            f"λ={f['damp']:g}; inverted with λ={f['damp_used']:g}")
    if len(pruner.failures) > 5:
        log(f"rank {comm.rank}: {len(pruner.failures)} Fisher blocks needed more damping in all")
    return finv


def check_agreement(masks: MaskSet, comm: Comm) -> None:
    """Every rank must hold bitwise identical target weights and masks."""
    comm.agree(weights_digest(masks.weights) + masks.checksum(), "weights and masks")


def pruning_step(model: nn.Module, masks: MaskSet, cfg: StepConfig, target: float,
                 batches: Iterable | None = None, comm: Comm | None = None,
                 log: Log = print, quiet: bool = False) -> dict:
    """Prune ``masks``' targets to ``target`` sparsity in ``cfg.recomputations`` sub-steps.

    ``batches`` are the gradient mini-batches (needed when the method reads a Fisher). Returns
    ``{"before", "sparsity", "fisher_failures"}``.
    """
    comm = comm or Comm()
    pruner = build_pruner(cfg, masks, comm)
    if pruner.needs_grads and batches is None:
        raise ValueError(f"{cfg.method} needs gradient batches")
    fisher_memory_check(pruner, cfg, lambda _: None)  # callers print the estimate once
    before, failures = masks.sparsity(), 0
    schedule = sparsity_schedule(before, target, cfg.recomputations)
    for i, s in enumerate(schedule):
        if pruner.needs_grads:
            estimate_fisher(pruner, model, batches, cfg.fisher.num_grads, log, quiet)
            failures += len(pruner.failures)
        pruner.step(s, cfg.scope)
        if len(schedule) > 1 and comm.is_main:
            log(f"step {i + 1}/{len(schedule)}: sparsity {masks.sparsity():.4f}")
    check_agreement(masks, comm)
    return {"before": before, "sparsity": masks.sparsity(), "fisher_failures": failures}


def prune_each(model: nn.Module, masks: MaskSet, cfg: StepConfig, sparsities: list[float],
               batches: Iterable | None, done: Callable[[float], None],
               comm: Comm | None = None, log: Log = print, quiet: bool = False) -> None:
    """One-shot pruning to each of ``sparsities`` from one gradient pass and one inversion.

    With r = 1 the saliencies and the OBS update depend only on the starting weights and F⁻¹,
    so each sparsity restarts from the starting weights with the same F⁻¹; ``done(s)`` is
    called with the model pruned to s (write it out there). Equals separate runs.
    """
    if cfg.recomputations != 1 and len(sparsities) > 1:
        raise ObertError("several --sparsity values share one Fisher only with "
                         "--recomputations 1: run each sparsity on its own")
    comm = comm or Comm()
    fisher_memory_check(build_pruner(cfg, masks, comm), cfg, log)
    if len(sparsities) == 1 or not cfg.needs_grads:
        start = {n: w.detach().clone() for n, w in masks.weights.items()}
        start_masks = masks.clone()
        for s in sorted(sparsities):
            _restore(masks, start, start_masks)
            pruning_step(model, masks, cfg, s, batches, comm, log, quiet)
            done(s)
        return
    pruner = build_pruner(cfg, masks, comm)
    finv = estimate_fisher(pruner, model, batches, cfg.fisher.num_grads, log, quiet)
    start = {n: w.detach().clone() for n, w in masks.weights.items()}
    start_masks = masks.clone()
    for s in sorted(sparsities):
        _restore(masks, start, start_masks)
        pruner.load_fisher_inv(finv)
        pruner.step(s, cfg.scope)
        check_agreement(masks, comm)
        done(s)


@torch.no_grad()
def _restore(masks: MaskSet, weights: dict[str, Tensor], start: MaskSet) -> None:
    for n, w in masks.weights.items():
        w.copy_(weights[n])
    masks.masks = {n: m.clone() for n, m in start.masks.items()}
