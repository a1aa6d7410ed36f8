"""Multiple-choice data: CommonsenseQA, WinoGrande and a generic form, read into one layout.

Every loader returns a ``datasets.Dataset`` of rows with

- ``stem``: the first segment of every choice's pair (the question, or WinoGrande's sentence up
  to its blank);
- ``choices``: the second segment of each choice's pair, one string per choice;
- ``label``: the index of the right choice (-1 where a test split has no answers);
- ``line``: where the row came from (its line in a JSON-lines or CSV file, its row number in a
  parquet file or a hub split), so that every error names it.

The formats:

- ``commonsense_qa``: the official JSON lines (``question.stem``, ``question.choices`` as
  ``[{label, text}]``, ``answerKey``) or the hub's ``tau/commonsense_qa`` parquet layout
  (``question``, ``choices: {label: [...], text: [...]}``, ``answerKey``).
- ``winogrande``: ``sentence`` with one ``_``, ``option1``, ``option2``, ``answer`` ("1"/"2"),
  as JSON lines or the hub's ``allenai/winogrande`` parquet. Encoded as the WinoGrande
  authors' BERT/RoBERTa baselines do: the sentence is cut at the blank; the text before it is
  the stem, and each option followed by the text after the blank is a choice (stem "Sarah was
  a much better surgeon than Maria so", choices "Sarah always got the easier cases." and
  "Maria always got the easier cases.").
- ``multiple_choice`` (any set): JSON lines, a JSON list, CSV or parquet with an optional
  ``context``, a ``question``, the choices as a list ``choices`` (strings, or objects with a
  ``text``) or as columns ``choice0`` … ``choiceN``, and a ``label``: the index, the index as
  text, a letter (A is the first choice) or the right choice's text. The stem is the context
  and the question joined by a space.

What a valid row of each format is, and the checks every row passes as it is read:
``obert.data.schema.choice``.

Encoding (``encode_choices``): every choice is one pair ``[CLS] stem [SEP] choice [SEP]``;
when a pair is too long the stem is cut (``only_first``), never the choice, and a choice that
leaves no room for the stem at the sequence length is refused with its line.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

import datasets

from obert.data.checks import NoData, require_dir
from obert.data.files import read_records
from obert.data.schema.choice import mc_dataset
from obert.data.tasks import TaskSpec
from obert.errors import ObertError
from obert.hub import dataset_access

logger = logging.getLogger(__name__)

MC_DIR_ENV = "OBERT_MC_DIR"
_EXTS = (".jsonl", ".json", ".parquet", ".csv")
# Local file names per task and split, tried in order in the task's folder and in --data-dir.
_FILES = {
    "commonsense_qa": {"train": ["train_rand_split.jsonl"], "dev": ["dev_rand_split.jsonl"],
                       "test": ["test_rand_split_no_answers.jsonl"]},
    "winogrande": {"dev": ["dev.jsonl", "dev.parquet"],
                   "test": ["test.jsonl", "test.parquet"]},
}
# WinoGrande's training sizes, largest first (the hub's configs winogrande_xs ... _xl).
WINOGRANDE_SIZES = ("xl", "l", "m", "s", "xs")


# --- files -> rows (what a valid row is: ``obert.data.schema.choice``) ----------------------


def _records(path: Path) -> list[tuple[str, dict]]:
    """(``line N``, ``row N`` or ``item N``, record) of a JSON-lines, JSON-list, CSV or parquet
    file; a CSV cell holding a JSON list is a list (of choices)."""
    if path.suffix not in _EXTS:
        raise ObertError(f"{path}: unsupported file type for multiple choice; use .jsonl, "
                         ".json, .csv or .parquet")
    records, _ = read_records(path)
    if path.suffix == ".csv":
        records = [(at, {k: _csv_value(v) for k, v in r.items()}) for at, r in records]
    return records


def _csv_value(v):
    """CSV cells are text; a JSON list in a cell (``["a", "b"]``) is a list of choices."""
    if isinstance(v, str) and v.startswith("[") and v.endswith("]"):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def read_mc_file(path: str | os.PathLike, task: TaskSpec,
                 split: str | None = None) -> datasets.Dataset:
    """One file of ``task``'s multiple-choice format, checked row by row (``split``: the
    split it is, which says whether rows need an answer)."""
    path = Path(path)
    if not path.is_file():
        raise ObertError(f"data file {path} does not exist")
    return mc_dataset(_records(path), task, str(path), split)


# --- splits: a file, a local folder or the hub ----------------------------------------------


def find_mc_files(task: TaskSpec, split: str, data_dir: str | os.PathLike,
                  config: str | None = None) -> list[Path]:
    """The files of ``split`` under ``data_dir`` (its ``task.name`` folder first): the task's
    official names, then hub-style ``{train,validation,test}-*.parquet``, then
    ``{split}.{jsonl,json,csv,parquet}``. WinoGrande's train is ``train_{size}`` (the config's
    size, else the largest present)."""
    root = Path(data_dir)
    names = list(_FILES.get(task.name, {}).get(split, []))
    if task.name == "winogrande" and split == "train":
        sizes = [config.rsplit("_", 1)[-1]] if config else list(WINOGRANDE_SIZES)
        names = [f"train_{s}{ext}" for s in sizes for ext in (".jsonl", ".parquet")]
    hub = task.hub_splits.get(split, split)
    for base in (root / task.name, root):
        if not base.is_dir():
            continue
        for name in names:
            if (base / name).is_file():
                return [base / name]
        hits = sorted(glob.glob(str(base / f"{hub}-*.parquet")))
        if hits:
            return [Path(h) for h in hits]
        for stem in dict.fromkeys((split, hub)):
            for ext in _EXTS:
                if (base / f"{stem}{ext}").is_file():
                    return [base / f"{stem}{ext}"]
    return []


def load_mc_split(task: TaskSpec, split: str = "dev", data_dir: str | os.PathLike | None = None,
                  data_file: str | os.PathLike | None = None,
                  config: str | None = None) -> datasets.Dataset:
    """An explicit file, else the task's files under ``data_dir`` (or $OBERT_MC_DIR), else the
    hub dataset (``config``: WinoGrande's size, ``winogrande_xl`` by default)."""
    if split not in task.hub_splits:
        raise ObertError(f"task {task.name} has no split {split!r}: choose one of "
                         f"{', '.join(task.splits)}")
    if config is not None and task.name != "winogrande":
        raise ObertError(f"--dataset-config is for winogrande (winogrande_xs ... _xl) and mlm, "
                         f"not {task.name}")
    if config is not None and config.rsplit("_", 1)[-1] not in WINOGRANDE_SIZES:
        raise ObertError(f"--dataset-config {config!r} is not a WinoGrande size: choose one of "
                         + ", ".join(f"winogrande_{s}" for s in reversed(WINOGRANDE_SIZES)))
    if data_file is not None:
        return read_mc_file(data_file, task, split)
    data_dir = data_dir or os.environ.get(MC_DIR_ENV) or None
    if data_dir is not None:
        require_dir(data_dir)
        files = find_mc_files(task, split, data_dir, config)
        if not files:
            want = ", ".join(_FILES.get(task.name, {}).get(split, [])
                             or ([f"train_{{{','.join(WINOGRANDE_SIZES)}}}.jsonl"]
                                 if task.name == "winogrande" else [f"{split}.jsonl"]))
            raise NoData(f"no {split} data for {task.name} under {data_dir}: expected "
                             f"{want} there or in {Path(data_dir) / task.name} (or pass "
                             "--train-file/--validation-file)")
        if task.name == "winogrande" and split == "train":
            logger.info("winogrande train: %s", files[0])
        parts = [read_mc_file(f, task, split) for f in files]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if not task.hub_dataset:
        raise ObertError(f"task {task.name} reads local files: pass --train-file/"
                         "--validation-file (.jsonl, .json, .csv or .parquet) or --data-dir")
    name = f"{task.hub_dataset}" + (f" ({config or task.hub_config})" if task.hub_config else "")
    try:
        args = (task.hub_dataset, config or task.hub_config) if task.hub_config else (
            task.hub_dataset,)
        with dataset_access():  # no network: fails at once, in one line
            ds = datasets.load_dataset(*args, split=task.hub_splits[split])
    except Exception as e:  # network, hub, or cache problems all mean the same to a user
        raise ObertError(f"could not load {name} from the Hugging Face hub "
                         f"({type(e).__name__}); pass --data-dir with a local copy or set "
                         f"{MC_DIR_ENV}") from None
    return mc_dataset(((f"row {i + 1}", r) for i, r in enumerate(ds)), task,
                      f"the hub's {name} {split} split", split)


# --- tokens ---------------------------------------------------------------------------------


def encode_choices(ds: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
    """Tokenize every (stem, choice) pair: ``input_ids`` etc. nested [choices][tokens] per row,
    ``labels`` the right choice. The stem is cut when a pair is too long; a choice that leaves
    no room for one stem token is refused with its line."""
    special = tokenizer.num_special_tokens_to_add(pair=True)
    cut = [0]

    def fn(batch):
        counts = [len(c) for c in batch["choices"]]
        firsts = [s for s, n in zip(batch["stem"], counts, strict=True) for _ in range(n)]
        seconds = [c for cs in batch["choices"] for c in cs]
        lines = [ln for ln, n in zip(batch["line"], counts, strict=True) for _ in range(n)]
        alone = tokenizer(seconds, add_special_tokens=False)["input_ids"]
        stems = tokenizer(firsts, add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(alone):
            if len(ids) + special + min(1, len(stems[i])) > max_length:
                raise ObertError(
                    f"line {lines[i]}: the choice {seconds[i][:40]!r} takes {len(ids)} tokens, "
                    f"which leaves no room for the stem within --max-seq-length {max_length}: "
                    "raise --max-seq-length or shorten the choice")
            cut[0] += len(ids) + len(stems[i]) + special > max_length
        enc = tokenizer(firsts, seconds, truncation="only_first", max_length=max_length)
        out: dict[str, list] = {k: [] for k in enc}
        start = 0
        for n in counts:
            for k in enc:
                out[k].append(enc[k][start: start + n])
            start += n
        out["labels"] = batch["label"]
        return out

    enc = ds.map(fn, batched=True, remove_columns=ds.column_names, desc="tokenize",
                 load_from_cache_file=False)
    if cut[0]:
        logger.warning("%d (stem, choice) pair(s) longer than %d tokens: their stems were cut",
                       cut[0], max_length)
    return enc


class ChoiceCollator:
    """Pads every choice of every row to the batch's longest: tensors [rows, choices, tokens]
    (``labels`` [rows] when the rows have them)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict:
        import torch

        n = len(features[0]["input_ids"])
        labels = [f["labels"] for f in features] if "labels" in features[0] else None
        flat = [{k: v[i] for k, v in f.items() if k != "labels"} for f in features
                for i in range(n)]
        batch = self.tokenizer.pad(flat, padding=True, return_tensors="pt")
        out = {k: v.view(len(features), n, -1) for k, v in batch.items()}
        if labels is not None:
            out["labels"] = torch.tensor(labels, dtype=torch.long)
        return out
