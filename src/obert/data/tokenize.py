"""Tokenize a task's dataset for a model: one or two text columns, truncation, labels."""

from __future__ import annotations

import datasets

from obert.data.tasks import TaskSpec


def encode(
    ds: datasets.Dataset, tokenizer, task: TaskSpec, max_length: int = 128, doc_stride: int = 128
) -> datasets.Dataset:
    """Return input_ids/attention_mask(/token_type_ids) and ``labels``; padding is left to the
    collator, so batches pad only to their longest row. For QA, training windows with
    ``start_positions``/``end_positions`` (see ``obert.data.qa``)."""
    if task.is_qa:
        from obert.data.qa import prepare_train_features

        return ds.map(prepare_train_features, batched=True, remove_columns=ds.column_names,
                      fn_kwargs={"tokenizer": tokenizer, "max_length": max_length,
                                 "doc_stride": doc_stride},
                      desc="tokenize", load_from_cache_file=False)

    def fn(batch):
        texts = [batch[k] for k in task.text_keys]
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        enc["labels"] = batch["label"]
        return enc

    return ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenize",
                  load_from_cache_file=False)


def batches(encoded: datasets.Dataset, tokenizer, batch_size: int, seed: int = 0):
    """A shuffled DataLoader of padded batches (labels included), fixed by ``seed``."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(encoded, batch_size=batch_size, shuffle=True, generator=gen,
                      collate_fn=DataCollatorWithPadding(tokenizer))
