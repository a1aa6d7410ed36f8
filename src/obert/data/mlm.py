"""Masked-language-model data: a text corpus in, blocks of tokens out, masked per batch.

- ``read_text_file``: plain text (one document per line) or JSON lines with a ``text`` field;
- ``load_corpus``: those files, or a hub dataset (``--dataset NAME --dataset-config CFG``),
  read whole or streamed (only the documents used are fetched);
- ``group_texts``: tokenize every document, concatenate, cut into blocks of ``block_size``
  tokens (the remainder is dropped), as Hugging Face's ``run_mlm.py`` does;
- ``masking_collator``: BERT's masking, 15% of the non-special tokens, of which 80% become
  [MASK], 10% a random token and 10% stay (Hugging Face's ``DataCollatorForLanguageModeling``),
  never a batch with nothing masked (``MaskingCollator``).
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import datasets
import torch
from transformers import DataCollatorForLanguageModeling

from obert.data.files import read_records, read_utf8
from obert.data.schema.text import corpus_texts
from obert.errors import ObertError
from obert.hub import dataset_access

MLM_PROBABILITY = 0.15
MASK_REPLACE = 0.8  # of the chosen tokens: [MASK]
RANDOM_REPLACE = 0.1  # of the chosen tokens: a random token (the other 10% stay as they are)
TEXT_EXTS = (".txt", ".text", ".json", ".jsonl")
VALIDATION_PERCENT = 5  # held out of a hub corpus's train split when it has no validation split
MASK_DRAWS = 4  # draws of a batch's masks before one token is masked by force


def read_text_file(path: str | os.PathLike) -> datasets.Dataset:
    """A ``text`` column, one row per document: a line of a ``.txt`` file, or the ``text``
    field of each line of a ``.json``/``.jsonl`` file. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ObertError(f"text file {path} does not exist")
    if path.suffix not in TEXT_EXTS:
        raise ObertError(f"{path}: unsupported text file type; use .txt (one document per "
                         "line) or .jsonl (one JSON object with a \"text\" field per line)")
    if path.suffix in (".json", ".jsonl"):
        texts = corpus_texts(read_records(path)[0], str(path))
    else:
        texts = [line for line in read_utf8(path).splitlines() if line.strip()]
    if not texts:
        raise ObertError(f"{path} has no text: it is empty or blank")
    return datasets.Dataset.from_dict({"text": texts})


def load_corpus(split: str, file: str | None = None, dataset: str | None = None,
                config: str | None = None, streaming: bool = False,
                max_samples: int | None = None) -> datasets.Dataset:
    """The ``text`` rows of ``split`` ("train" or "dev"): from ``file``, else from the hub
    dataset ``dataset``/``config``. A hub corpus without a validation split gives its last
    ``VALIDATION_PERCENT``% of train as dev. ``streaming`` reads the hub corpus lazily and keeps
    only its first ``max_samples`` documents (so it needs ``max_samples``)."""
    if file is not None:
        return read_text_file(file)
    if dataset is None:
        flag = "--train-file" if split == "train" else "--validation-file"
        raise ObertError(f"the mlm task needs text: pass {flag} (a .txt or .jsonl file) or "
                         "--dataset NAME [--dataset-config CONFIG] for a hub corpus")
    if streaming:
        if max_samples is None:
            raise ObertError("--streaming reads only the documents it uses: pass "
                             "--max-train-samples N to say how many")
        return _streamed(dataset, config, split, max_samples)
    try:
        with dataset_access():  # no network: fails at once, in one line
            splits = datasets.get_dataset_split_names(dataset, config)
            if split == "train" or "validation" in splits:
                name = "train" if split == "train" else "validation"
                if split == "train" and "validation" not in splits:
                    name = f"train[:{100 - VALIDATION_PERCENT}%]"
            else:
                name = f"train[{100 - VALIDATION_PERCENT}%:]"
            ds = datasets.load_dataset(dataset, config, split=name)
    except Exception as e:  # offline, unknown name or config: one line
        raise ObertError(f"cannot load the hub dataset {dataset!r}"
                         f"{f' ({config})' if config else ''}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}; pass local text "
                         "files with --train-file/--validation-file instead") from None
    return _text_column(ds, dataset)


def _streamed(dataset: str, config: str | None, split: str, n: int) -> datasets.Dataset:
    """The first ``n`` documents of a hub corpus, read as a stream (train), or the next
    ``max(1, n·5/95)`` after them when it has no validation split (dev)."""
    try:
        with dataset_access():  # no network: fails at once, in one line
            splits = datasets.get_dataset_split_names(dataset, config)
            name = "validation" if split == "dev" and "validation" in splits else "train"
            stream = datasets.load_dataset(dataset, config, split=name, streaming=True)
            skip = n if split == "dev" and name == "train" else 0
            take = n if split == "train" else max(1, n * VALIDATION_PERCENT //
                                                  (100 - VALIDATION_PERCENT))
            rows = list(islice(stream, skip, skip + take))
    except Exception as e:
        raise ObertError(f"cannot stream the hub dataset {dataset!r}: {type(e).__name__}; "
                         "pass local text files with --train-file/--validation-file") from None
    if not rows or "text" not in rows[0]:
        raise ObertError(f"the hub dataset {dataset!r} has no \"text\" column to train on")
    return datasets.Dataset.from_dict({"text": [r["text"] for r in rows]})


def _text_column(ds: datasets.Dataset, where: str) -> datasets.Dataset:
    if "text" not in ds.column_names:
        raise ObertError(f"{where} has no \"text\" column (found {', '.join(ds.column_names)})")
    return ds.select_columns(["text"]).filter(lambda r: bool(r["text"] and r["text"].strip()))


def group_texts(ds: datasets.Dataset, tokenizer, block_size: int) -> datasets.Dataset:
    """Blocks of exactly ``block_size`` tokens: every document tokenized with its special tokens,
    the documents concatenated in order, the concatenation cut into blocks; the last partial
    block of each map batch is dropped. ``special_tokens_mask`` keeps [CLS]/[SEP] unmasked."""

    def tokenize(batch):
        return tokenizer(batch["text"], return_special_tokens_mask=True, truncation=False,
                         verbose=False)

    def group(batch):
        joined = {k: [t for row in v for t in row] for k, v in batch.items()}
        n = len(joined["input_ids"]) // block_size * block_size
        return {k: [v[i: i + block_size] for i in range(0, n, block_size)]
                for k, v in joined.items()}

    tokens = ds.map(tokenize, batched=True, remove_columns=ds.column_names, desc="tokenize",
                    load_from_cache_file=False)
    blocks = tokens.map(group, batched=True, batch_size=1000, desc=f"group into {block_size}",
                        load_from_cache_file=False)
    if len(blocks) == 0:
        raise ObertError(f"the text has fewer than {block_size} tokens, not one block of "
                         f"--max-seq-length {block_size}: give more text or a shorter length")
    return blocks


class MaskingCollator(DataCollatorForLanguageModeling):
    """Hugging Face's MLM collator, except that a batch always has a masked token.

    A batch with no label (short rows, a low probability) has a NaN loss: the mean over zero
    tokens, which then poisons the Fisher or the optimizer. Such a batch's masks are drawn
    again, up to ``MASK_DRAWS`` times, then one maskable token, drawn uniformly, becomes [MASK]
    (as 80% of the chosen do). Every draw comes from the collator's generator, so a seeded
    collator gives the same batches; a batch that masks something on the first draw is exactly
    Hugging Face's."""

    def torch_mask_tokens(self, inputs: torch.Tensor, special_tokens_mask=None,
                          offset_mapping=None) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(MASK_DRAWS):  # the parent writes into its inputs: draw on a copy
            ids, labels = super().torch_mask_tokens(inputs.clone(), special_tokens_mask,
                                                    offset_mapping)
            if (labels != -100).any():
                return ids, labels
        if special_tokens_mask is None:
            special_tokens_mask = [self.tokenizer.get_special_tokens_mask(
                row, already_has_special_tokens=True) for row in inputs.tolist()]
        maskable = (~torch.as_tensor(special_tokens_mask, dtype=torch.bool)).reshape(-1)
        where = maskable.nonzero().reshape(-1)
        if where.numel() == 0:
            raise ObertError("an MLM batch holds only special tokens ([CLS], [SEP], padding), "
                             "so nothing can be masked: use a longer --max-seq-length")
        pick = where[torch.randint(where.numel(), (1,), generator=self.generator)]
        labels = torch.full_like(inputs, -100)
        labels.view(-1)[pick] = inputs.reshape(-1)[pick]
        ids = inputs.clone()
        ids.view(-1)[pick] = self.tokenizer.convert_tokens_to_ids(self.tokenizer.mask_token)
        return ids, labels


def masking_collator(tokenizer, seed: int | None = None,
                     mlm_probability: float = MLM_PROBABILITY) -> MaskingCollator:
    """BERT's 15% masking with 80/10/10 replacement; ``seed`` fixes the masks (evaluation)."""
    if tokenizer.mask_token is None:
        raise ObertError(f"the tokenizer ({type(tokenizer).__name__}) has no mask token, so "
                         "masked-language modelling cannot mask anything")
    return MaskingCollator(
        tokenizer, mlm=True, mlm_probability=mlm_probability, mask_replace_prob=MASK_REPLACE,
        random_replace_prob=RANDOM_REPLACE, seed=seed)
