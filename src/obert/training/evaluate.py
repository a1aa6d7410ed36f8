"""Evaluate a model on a split, with a progress bar: GLUE classifiers, multiple-choice models,
SQuAD readers and masked-language models."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding

from obert.data.metrics import compute_metrics
from obert.data.tasks import TaskSpec


def _length(ids: list) -> int:
    """Tokens of a row: its length, or its longest choice's for multiple choice."""
    return max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)


@torch.no_grad()
def predict(model, encoded, tokenizer, batch_size: int = 64, quiet: bool = False,
            task: TaskSpec | None = None) -> np.ndarray:
    """Logits for every row of ``encoded``, in order. Rows are batched by length (less padding);
    ``task`` picks the collator (multiple choice pads [rows, choices, tokens])."""
    from obert.data.tokenize import collator

    model.eval()
    order = np.argsort([_length(x) for x in encoded["input_ids"]], kind="stable")
    rows = encoded.select(order).remove_columns(["labels"])
    loader = DataLoader(rows, batch_size=batch_size, collate_fn=collator(task, tokenizer))
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
    logits = predict(model, encoded, tokenizer, batch_size, quiet, task)
    metrics = compute_metrics(task, logits, np.asarray(encoded["labels"]))
    return {**metrics, "n": len(encoded)}


@torch.no_grad()
def evaluate_qa(model, examples, tokenizer, task: TaskSpec, max_length: int = 384,
                doc_stride: int = 128, batch_size: int = 64, quiet: bool = False) -> dict:
    """SQuAD EM/F1 (percent) of ``model`` on raw ``examples``: windows, logits, best spans."""
    from obert.data.qa import postprocess, prepare_eval_features
    from obert.data.qa_metrics import squad_scores

    feats = examples.map(prepare_eval_features, batched=True, remove_columns=examples.column_names,
                         fn_kwargs={"tokenizer": tokenizer, "max_length": max_length,
                                    "doc_stride": doc_stride},
                         desc="tokenize", load_from_cache_file=False)
    model.eval()
    inputs = feats.remove_columns(["example_id", "offset_mapping"])
    order = np.argsort([len(x) for x in inputs["input_ids"]], kind="stable")
    loader = DataLoader(inputs.select(order), batch_size=batch_size,
                        collate_fn=DataCollatorWithPadding(tokenizer))
    device = next(model.parameters()).device
    width = max(len(x) for x in inputs["input_ids"])
    start = np.full((len(feats), width), -1e4, dtype=np.float32)
    end = start.copy()
    row = 0
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=quiet):
        out = model(**{k: v.to(device) for k, v in batch.items()})
        n, w = out.start_logits.shape
        idx = order[row: row + n]
        start[idx, :w] = out.start_logits.float().cpu().numpy()
        end[idx, :w] = out.end_logits.float().cpu().numpy()
        row += n
    preds = postprocess(examples, feats, start, end)
    golds = {r["id"]: r["answers"]["text"] for r in examples}
    return {**squad_scores(preds, golds), "n": len(examples), "windows": len(feats)}


MLM_EVAL_SEED = 1234  # every model is scored on the same masked positions
MLM_MASK_CHUNK = 64  # blocks masked per collator call: the masks do not depend on batch_size


@torch.no_grad()
def evaluate_mlm(model, blocks, tokenizer, batch_size: int = 64, quiet: bool = False,
                 seed: int = MLM_EVAL_SEED) -> dict:
    """Masked-token accuracy, mean cross-entropy (``loss``) and ``perplexity`` = exp(loss) over
    the masked positions of ``blocks`` (from ``group_texts``). The masks are drawn by a collator
    seeded with ``seed``, over the blocks in order and in fixed chunks, so every model and
    every batch size sees the same masks."""
    from obert.data.tasks import get_task
    from obert.data.tokenize import collator

    model.eval()
    collate = collator(get_task("mlm"), tokenizer, seed)
    device = next(model.parameters()).device
    nll, correct, count = 0.0, 0, 0
    bar = tqdm(total=len(blocks), desc="evaluate", unit="block", disable=quiet)
    for start in range(0, len(blocks), MLM_MASK_CHUNK):
        chunk = collate([blocks[i] for i in range(start, min(start + MLM_MASK_CHUNK,
                                                              len(blocks)))])
        labels_all = chunk.pop("labels")
        for b in range(0, len(labels_all), batch_size):
            batch = {k: v[b: b + batch_size].to(device) for k, v in chunk.items()}
            labels = labels_all[b: b + batch_size].to(device)
            picked = labels != -100
            logits = model(**batch).logits[picked].float()
            gold = labels[picked]
            nll += torch.nn.functional.cross_entropy(logits, gold, reduction="sum").item()
            correct += (logits.argmax(-1) == gold).sum().item()
            count += gold.numel()
            bar.update(len(labels))
    bar.close()
    loss = nll / max(count, 1)
    return {"accuracy": correct / max(count, 1), "perplexity": float(np.exp(loss)),
            "loss": loss, "n": len(blocks), "masked_tokens": count}


def evaluate_split(model, ds, tokenizer, task: TaskSpec, max_length: int, batch_size: int = 64,
                   quiet: bool = False, doc_stride: int = 128) -> dict:
    """The task's metrics on a raw split (tokenized here), for any task kind."""
    if task.is_mlm:
        from obert.data.mlm import group_texts

        return evaluate_mlm(model, group_texts(ds, tokenizer, max_length), tokenizer,
                            batch_size, quiet)
    if task.is_qa:
        return evaluate_qa(model, ds, tokenizer, task, max_length, doc_stride, batch_size, quiet)
    from obert.data.tokenize import encode

    return evaluate(model, encode(ds, tokenizer, task, max_length), tokenizer, task, batch_size,
                    quiet)
