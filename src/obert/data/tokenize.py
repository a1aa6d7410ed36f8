"""Tokenize a task's dataset for a model (one or two text columns, truncation, labels; QA
windows; MLM blocks) and batch it with the task's collator."""

from __future__ import annotations

import datasets

from obert.data.tasks import TaskSpec


def encode(
    ds: datasets.Dataset, tokenizer, task: TaskSpec, max_length: int = 128, doc_stride: int = 128
) -> datasets.Dataset:
    """Return input_ids/attention_mask(/token_type_ids) and ``labels``; padding is left to the
    collator, so batches pad only to their longest row. For QA, training windows with
    ``start_positions``/``end_positions`` (see ``obert.data.qa``). For MLM, blocks of exactly
    ``max_length`` tokens (``obert.data.mlm.group_texts``), masked later by the collator. For
    multiple choice, one pair per choice, nested [choices][tokens] (``obert.data.mc``)."""
    if task.is_mc:
        from obert.data.mc import encode_choices

        return encode_choices(ds, tokenizer, max_length)
    if task.is_mlm:
        from obert.data.mlm import group_texts

        return group_texts(ds, tokenizer, max_length)
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


def collator(task: TaskSpec | None, tokenizer, seed: int | None = None):
    """The task's batch maker: padding to the longest row, plus BERT's masking for MLM
    (``seed`` fixes the masks; None draws them from torch's global generator); for multiple
    choice, every choice padded to the batch's longest, [rows, choices, tokens]."""
    if task is not None and task.is_mc:
        from obert.data.mc import ChoiceCollator

        return ChoiceCollator(tokenizer)
    if task is not None and task.is_mlm:
        from obert.data.mlm import masking_collator

        return masking_collator(tokenizer, seed)
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def batches(encoded: datasets.Dataset, tokenizer, batch_size: int, seed: int = 0,
            task: TaskSpec | None = None):
    """A shuffled DataLoader of the task's batches (labels included), fixed by ``seed``: the
    order and, for MLM, the masks."""
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(encoded, batch_size=batch_size, shuffle=True, generator=gen,
                      collate_fn=collator(task, tokenizer, seed))
