"""Evaluate a sequence classifier on a tokenized split, with a progress bar."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from obert.data.metrics import compute_metrics
from obert.data.tasks import TaskSpec


@torch.no_grad()
def predict(model, encoded, tokenizer, batch_size: int = 64, quiet: bool = False) -> np.ndarray:
    """Logits for every row of ``encoded``, in order. Rows are batched by length (less padding)."""
    model.eval()
    order = np.argsort([len(x) for x in encoded["input_ids"]], kind="stable")
    rows = encoded.select(order).remove_columns(["labels"])
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    device = next(model.parameters()).device
    out = []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=quiet):
        out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    logits = torch.cat(out).numpy()
    result = np.empty_like(logits)
    result[order] = logits
    return result


def evaluate(
    model, encoded, tokenizer, task: TaskSpec, batch_size: int = 64, quiet: bool = False
) -> dict[str, float]:
    """The task's metrics on ``encoded`` plus ``n``, the number of rows scored."""
    logits = predict(model, encoded, tokenizer, batch_size, quiet)
    metrics = compute_metrics(task, logits, np.asarray(encoded["labels"]))
    return {**metrics, "n": len(encoded)}
