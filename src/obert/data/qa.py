"""Extractive QA (SQuAD v1.1): loading, windows over long contexts, answers back to text.

Pre-processing follows what users of ``run_qa.py`` expect: question first, context second,
windows of ``max_length`` tokens overlapping by ``doc_stride``, every window mapped back to its
example, answer start/end found through the character offsets (a window that does not hold the
whole answer points at the [CLS] token), and questions longer than ``max_query_length`` tokens
cut so a window always has room for context. Post-processing takes the ``n_best`` start and end
logits of every window, keeps spans inside the context no longer than ``max_answer_length``
tokens, and returns the best span's text per question across all of its windows.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import datasets
import numpy as np

from obert.data.checks import NoData
from obert.data.files import read_utf8
from obert.data.schema.squad import squad_json, squad_rows
from obert.errors import ObertError
from obert.hub import dataset_access

SQUAD_DIR_ENV = "OBERT_SQUAD_DIR"
SQUAD_FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}


def load_squad_split(split: str, data_dir: str | os.PathLike | None = None,
                     data_file: str | os.PathLike | None = None) -> datasets.Dataset:
    """An explicit SQuAD JSON file, else ``train-v1.1.json``/``dev-v1.1.json`` in ``data_dir``
    (or its ``squad/`` folder, or $OBERT_SQUAD_DIR), else the hub's ``rajpurkar/squad``."""
    if split not in SQUAD_FILES:
        raise ObertError(f"task squad has no split {split!r}: choose train or dev")
    if data_file is not None:
        if not Path(data_file).is_file():
            raise ObertError(f"data file {data_file} does not exist")
        return load_squad_json(data_file)
    data_dir = data_dir or os.environ.get(SQUAD_DIR_ENV) or None
    if data_dir is not None:
        name = SQUAD_FILES[split]
        for base in (Path(data_dir), Path(data_dir) / "squad"):
            if (base / name).is_file():
                return load_squad_json(base / name)
        raise NoData(f"no {split} data for squad under {data_dir}: expected {name} there or "
                         f"in {Path(data_dir) / 'squad'} (or pass --train-file/--validation-file)")
    try:
        with dataset_access():  # no network: fails at once, in one line
            ds = datasets.load_dataset("rajpurkar/squad", split="train" if split == "train"
                                       else "validation")
    except Exception as e:  # network, hub, or cache problems all mean the same to a user
        raise ObertError(f"could not load squad from the Hugging Face hub ({type(e).__name__}); "
                         f"pass --data-dir with dev-v1.1.json or set {SQUAD_DIR_ENV}") from None
    keys = ["id", "title", "context", "question", "answers"]
    return squad_rows(ds.select_columns([k for k in keys if k in ds.column_names]).to_list(),
                      "the hub's rajpurkar/squad")


def load_squad_json(path: str | Path) -> datasets.Dataset:
    """A SQuAD-format JSON file as rows: id, title, context, question, answers{text,
    answer_start}; every question checked against the SQuAD schema."""
    text = read_utf8(path)
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ObertError(f"{path} is not a SQuAD-format JSON file ({type(e).__name__}: "
                         f"{str(e)[:80]}): it needs a top-level 'data' list of articles") from None
    return squad_json(raw, text, str(path))


def split_articles(ds: datasets.Dataset, heldout_articles: int) -> tuple[datasets.Dataset,
                                                                       datasets.Dataset]:
    """(train, held-out): the last ``heldout_articles`` articles, in file order, are held out.

    Whole articles never straddle the split, so no paragraph is seen on both sides.
    """
    titles = list(dict.fromkeys(ds["title"]))
    if not 0 < heldout_articles < len(titles):
        raise ObertError(f"--split-articles {heldout_articles} must be between 1 and "
                         f"{len(titles) - 1} (the file has {len(titles)} articles)")
    held = set(titles[-heldout_articles:])
    is_held = [t in held for t in ds["title"]]
    return (ds.select([i for i, h in enumerate(is_held) if not h]),
            ds.select([i for i, h in enumerate(is_held) if h]))


def _questions(tokenizer, questions: list[str], max_query_length: int) -> list[str]:
    """Strip questions and cut those over ``max_query_length`` tokens at a token boundary."""
    out = []
    for q in questions:
        q = q.lstrip()
        enc = tokenizer(q, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > max_query_length:
            q = q[: enc["offset_mapping"][max_query_length - 1][1]]
        out.append(q)
    return out


MAX_QUERY_LENGTH = 64  # questions are cut to this many tokens (run_qa.py's default)
SPECIAL_TOKENS = 4  # [CLS] q [SEP] c [SEP] (RoBERTa: <s> q </s></s> c </s>)


def check_windows(max_length: int, doc_stride: int,
                  max_query_length: int = MAX_QUERY_LENGTH) -> None:
    """Refuse window settings the tokenizer cannot honour for the longest question: the
    context part of a window (max_length − question − special tokens) must exceed the stride."""
    room = max_length - max_query_length - SPECIAL_TOKENS
    if room < 1:
        raise ObertError(
            f"--max-seq-length {max_length} leaves no room for context after a question of up "
            f"to {max_query_length} tokens: use at least {max_query_length + SPECIAL_TOKENS + 32} "
            "(the paper uses 384)")
    if doc_stride >= room:
        raise ObertError(
            f"--doc-stride {doc_stride} must be below the {room} context tokens a "
            f"{max_length}-token window leaves after a question of up to {max_query_length} "
            f"tokens: use --doc-stride {max(1, room // 2)} or a longer --max-seq-length")


def _windows(examples, tokenizer, max_length: int, doc_stride: int, max_query_length: int):
    if tokenizer.padding_side != "right":
        raise ObertError("QA pre-processing needs a tokenizer that pads on the right")
    return tokenizer(
        _questions(tokenizer, examples["question"], max_query_length), examples["context"],
        truncation="only_second", max_length=max_length, stride=doc_stride,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
    )


def prepare_train_features(examples, tokenizer, max_length: int = 384, doc_stride: int = 128,
                           max_query_length: int = 64):
    """Windows with ``start_positions``/``end_positions`` (0, the [CLS] token, when the window
    does not hold the whole first gold answer)."""
    enc = _windows(examples, tokenizer, max_length, doc_stride, max_query_length)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = enc["overflow_to_sample_mapping"][i]
        answers = examples["answers"][ex]
        seq = enc.sequence_ids(i)
        ctx = [j for j, s in enumerate(seq) if s == 1]
        if not answers["answer_start"] or not ctx:
            starts.append(0)
            ends.append(0)
            continue
        a0 = answers["answer_start"][0]
        a1 = a0 + len(answers["text"][0])
        c0, c1 = ctx[0], ctx[-1]
        if offsets[c0][0] > a0 or offsets[c1][1] < a1:
            starts.append(0)
            ends.append(0)
            continue
        s = c0
        while s <= c1 and offsets[s][0] <= a0:
            s += 1
        e = c1
        while e >= c0 and offsets[e][1] >= a1:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    enc["start_positions"], enc["end_positions"] = starts, ends
    enc.pop("offset_mapping")
    enc.pop("overflow_to_sample_mapping")
    return enc


def prepare_eval_features(examples, tokenizer, max_length: int = 384, doc_stride: int = 128,
                          max_query_length: int = 64):
    """Windows with ``example_id`` and ``offset_mapping`` (None outside the context)."""
    enc = _windows(examples, tokenizer, max_length, doc_stride, max_query_length)
    ids, offsets = [], []
    for i, offs in enumerate(enc["offset_mapping"]):
        seq = enc.sequence_ids(i)
        ids.append(examples["id"][enc["overflow_to_sample_mapping"][i]])
        offsets.append([o if seq[j] == 1 else None for j, o in enumerate(offs)])
    enc["example_id"], enc["offset_mapping"] = ids, offsets
    enc.pop("overflow_to_sample_mapping")
    return enc


def postprocess(examples: datasets.Dataset, features: datasets.Dataset, start_logits: np.ndarray,
                end_logits: np.ndarray, n_best: int = 20, max_answer_length: int = 30
                ) -> dict[str, str]:
    """The best answer text per question id, across all of its windows.

    ``start_logits``/``end_logits`` are [num_features, seq_len] (padded rows are fine: the
    padding has no offsets and is never chosen).
    """
    by_example: dict[str, list[int]] = defaultdict(list)
    for i, eid in enumerate(features["example_id"]):
        by_example[eid].append(i)
    offsets_all = features["offset_mapping"]
    answers = {}
    for ex in examples:
        best, best_score = "", -np.inf
        for fi in by_example.get(ex["id"], []):
            offsets = offsets_all[fi]
            n = len(offsets)
            s_log, e_log = start_logits[fi][:n], end_logits[fi][:n]
            top_s = np.argsort(s_log)[::-1][:n_best]
            top_e = np.argsort(e_log)[::-1][:n_best]
            for s in top_s:
                if offsets[s] is None:
                    continue
                for e in top_e:
                    if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = s_log[s] + e_log[e]
                    if score > best_score:
                        best_score = score
                        best = ex["context"][offsets[s][0]: offsets[e][1]]
        answers[ex["id"]] = best
    return answers
