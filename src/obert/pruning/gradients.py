"""Gradient collection for the empirical Fisher: eval mode, task loss, float32, no autocast."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from itertools import cycle, islice

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


def rank_batches(batches: Iterable, rank: int = 0, world: int = 1) -> Iterator:
    """This rank's share of the (cycled) batch sequence: batches rank, rank + R, rank + 2R, …

    Together the R ranks see exactly the batches one process would, so R ranks with m/R
    gradients each build the Fisher of one process with m."""
    return islice(cycle(batches), rank, None, world)


def collect_grads(
    model: nn.Module,
    weights: dict[str, Tensor],
    batches: Iterable[dict[str, Tensor]],
    num_grads: int,
    quiet: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Yield ``num_grads`` mini-batch gradients of the task loss w.r.t. ``weights``, in float32.

    Dropout is off (``eval()``), as the paper's Fisher uses. Only the target weights require
    gradients meanwhile, which skips the rest of the weight-gradient work; train mode and every
    ``requires_grad`` flag are restored afterwards. ``batches`` is cycled if it runs out (an
iterator is read as it is).

    Which forward runs: ``type(model).forward``, the class's own method, inside
    ``autocast(enabled=False)``. Under ``--fp16``/``--bf16`` accelerate replaces the *instance's*
    ``forward`` with an autocast wrapper; half-precision gradients without loss scaling
    underflow and would turn F into λI, so the Fisher must never see that forward.
    """
    was_training = model.training
    model.eval()
    device = next(iter(weights.values())).device
    saved = {p: p.requires_grad for p in model.parameters()}
    targets = {id(w) for w in weights.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in targets)
    forward = type(model).forward
    try:
        it = batches if isinstance(batches, Iterator) else cycle(batches)
        for _ in tqdm(range(num_grads), desc="gradients", unit="grad", disable=quiet):
            batch = {k: v.to(device) for k, v in next(it).items()}
            for w in weights.values():
                w.grad = None
            with torch.autocast(device.type, enabled=False):
                loss = forward(model, **batch).loss
            loss.float().backward()
            yield {name: w.grad.detach().float() for name, w in weights.items()}
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)


@contextlib.contextmanager
def gradient_rounds(model: nn.Module, weights: dict[str, Tensor], batches: Iterable,
                    num_grads: int, rank: int = 0, world: int = 1,
                    quiet: bool = False) -> Iterator[Iterator[dict[str, Tensor] | None]]:
    """⌈m/R⌉ rounds of this rank's gradients; a rank out of gradients yields None.

    Rank r computes m//R (+1 if r < m mod R) gradients on its batches (``rank_batches``); every
    rank goes through the same number of rounds, as the Fisher's all-to-all needs."""
    mine = num_grads // world + int(rank < num_grads % world)
    rounds = -(-num_grads // world)
    grads = collect_grads(model, weights, rank_batches(batches, rank, world), mine,
                          quiet or rank != 0)
    with contextlib.closing(grads):  # restores the model even if a round fails
        yield (next(grads, None) if i < mine else None for i in range(rounds))
