"""Gradient collection for the empirical Fisher: eval mode, task loss, masked gradients."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import cycle

from torch import Tensor, nn
from tqdm.auto import tqdm


def collect_grads(
    model: nn.Module,
    weights: dict[str, Tensor],
    batches: Iterable[dict[str, Tensor]],
    num_grads: int,
    quiet: bool = False,
) -> Iterator[dict[str, Tensor]]:
    """Yield ``num_grads`` mini-batch gradients of the task loss w.r.t. ``weights``.

    Dropout is off (``eval()``), as the paper's Fisher uses. Only the target weights require
    gradients meanwhile, which skips the rest of the weight-gradient work. ``batches`` is
    cycled if it runs out. The pruner masks the gradients of pruned weights.
    """
    was_training = model.training
    model.eval()
    device = next(iter(weights.values())).device
    saved = {p: p.requires_grad for p in model.parameters()}
    targets = {id(w) for w in weights.values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in targets)
    try:
        it = cycle(batches)
        for _ in tqdm(range(num_grads), desc="gradients", unit="grad", disable=quiet):
            batch = {k: v.to(device) for k, v in next(it).items()}
            for w in weights.values():
                w.grad = None
            loss = model(**batch).loss
            loss.backward()
            yield {name: w.grad.detach() for name, w in weights.items()}
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
