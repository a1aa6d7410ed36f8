"""Load GLUE splits from a local folder, explicit files, or the Hugging Face hub.

Every loader returns a ``datasets.Dataset`` with the task's canonical text columns (the hub's
names) and an integer ``label`` (a float for STS-B; -1 where a test split has no labels),
every row checked against the task's schema (``obert.data.schema.glue``) as it is read.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
from pathlib import Path

import datasets

from obert.data.checks import NoData, require_dir
from obert.data.files import RECORD_EXTS, read_records, read_utf8
from obert.data.schema.glue import glue_dataset, glue_records, require_columns
from obert.data.tasks import TaskSpec
from obert.errors import ObertError
from obert.hub import dataset_access

GLUE_DIR_ENV = "OBERT_GLUE_DIR"
logger = logging.getLogger(__name__)
_TABLE_EXTS = (".parquet", ".csv", ".json", ".jsonl", ".tsv")


def read_glue_tsv(path: str | os.PathLike, task: TaskSpec, split: str = "dev") -> datasets.Dataset:
    """Read one official GLUE TSV: tab-separated, no quoting, no NA conversion, BOM-tolerant."""
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter="\t",
                        quoting=csv.QUOTE_NONE)
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        raise ObertError(f"cannot read {path}: {e}") from None
    if not rows:
        raise ObertError(f"{path} is empty: expected a GLUE TSV with a header line")
    # CoLA's train/dev have no header; its test file has one ("index", "sentence").
    if task.tsv_no_header and rows[0][1][0] not in ("index", "id"):
        header, body = list(task.tsv_no_header), rows
        mapping = {c: c for c in header}
    else:
        header, body = rows[0][1], rows[1:]
        mapping = task.tsv_columns
    index = {dst: header.index(src) for src, dst in mapping.items() if src in header}
    missing = [c for c in task.text_keys if c not in index]
    if missing:
        wanted = [s for s, d in mapping.items() if d in missing]
        raise ObertError(
            f"{path} lacks column(s) {', '.join(wanted)} for task {task.name}: "
            f"found {', '.join(header)}; pass the official GLUE file"
        )
    columns: dict[str, list] = {dst: [] for dst in index}
    lines, skipped = [], 0
    for line, row in body:
        if len(row) != len(header):
            skipped += bool(row)  # a handful of malformed lines exist in QQP/MNLI train
            continue
        lines.append(line)
        for dst, i in index.items():
            columns[dst].append(row[i])
    if skipped:
        logger.warning("%s: skipped %d malformed line(s) with a wrong number of fields", path, skipped)
    return glue_dataset(columns, lambda i: f"line {lines[i]}", task, split, str(path), cells=True)


def read_table(path: str | os.PathLike, task: TaskSpec, split: str = "dev") -> datasets.Dataset:
    """Read a CSV/JSON/parquet file in the hub's layout (or a GLUE TSV), every row checked."""
    path = str(path)
    if not os.path.isfile(path):
        raise ObertError(f"data file {path} does not exist")
    if path.endswith(".tsv"):
        return read_glue_tsv(path, task, split)
    if Path(path).suffix not in RECORD_EXTS:
        raise ObertError(f"{path}: unsupported file type; use .tsv, .csv, .json, .jsonl or .parquet")
    records, header = read_records(path)
    return glue_records(records, task, split, path, header, cells=path.endswith(".csv"))


def find_local_files(task: TaskSpec, split: str, data_dir: str | os.PathLike) -> list[str]:
    """Files for ``split`` under ``data_dir``: GLUE TSV layout first, then the hub's layout.

    ``data_dir`` may be the GLUE root (holding SST-2/, MNLI/, ...), a task folder, or a folder
    of hub-style files named after the split (``validation_matched-00000-of-00001.parquet``).
    """
    root = Path(data_dir)
    bases = [root / task.glue_dir, root / task.name, root]
    hub_split = task.hub_splits[split]
    for base in bases:
        if not base.is_dir():
            continue
        tsv = base / task.tsv_files[split]
        if tsv.is_file():
            return [str(tsv)]
        for ext in _TABLE_EXTS:
            for stem in (hub_split, split):
                hits = sorted(glob.glob(str(base / f"{stem}{ext}")))
                hits += sorted(glob.glob(str(base / f"{stem}-*{ext}")))
                if hits:
                    return hits
    return []


def load_split(
    task: TaskSpec,
    split: str = "dev",
    data_dir: str | os.PathLike | None = None,
    data_file: str | os.PathLike | None = None,
    config: str | None = None,
) -> datasets.Dataset:
    """Load one split: an explicit file, else a local folder, else the hub's ``glue`` dataset.
    SQuAD and the multiple-choice tasks have loaders of their own (``config``: WinoGrande's
    size)."""
    if task.is_qa:
        from obert.data.qa import load_squad_split

        return load_squad_split(split, data_dir, data_file)
    if task.is_mc:
        from obert.data.mc import load_mc_split

        return load_mc_split(task, split, data_dir, data_file, config)
    if split not in task.hub_splits:
        raise ObertError(
            f"task {task.name} has no split {split!r}: choose one of {', '.join(task.splits)}"
        )
    if data_file is not None:
        return read_table(data_file, task, split)
    data_dir = data_dir or os.environ.get(GLUE_DIR_ENV) or None
    if data_dir is not None:
        require_dir(data_dir)
        files = find_local_files(task, split, data_dir)
        if not files:
            raise NoData(
                f"no {split} data for {task.name} under {data_dir}: expected "
                f"{task.glue_dir}/{task.tsv_files[split]} (GLUE layout) or "
                f"{task.hub_splits[split]}-*.parquet (hub layout)"
            )
        parts = [read_table(f, task, split) for f in files]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    try:
        with dataset_access():  # no network: fails at once, in one line
            ds = datasets.load_dataset("nyu-mll/glue", task.hub_config,
                                       split=task.hub_splits[split])
    except Exception as e:  # network, hub, or cache problems all mean the same to a user
        raise ObertError(
            f"could not load glue/{task.hub_config} from the Hugging Face hub "
            f"({type(e).__name__}); pass --data-dir with a local GLUE folder or set {GLUE_DIR_ENV}"
        ) from None
    where = f"glue/{task.hub_config} {task.hub_splits[split]}"
    require_columns(ds.column_names, task, where)
    columns = ds.select_columns([k for k in (*task.text_keys, "label")
                                 if k in ds.column_names]).to_dict()
    return glue_dataset(columns, lambda i: f"row {i + 1}", task, split, where)


def subsample(ds: datasets.Dataset, n: int | None, seed: int = 0) -> datasets.Dataset:
    """A fixed random subset of ``n`` rows (all rows when ``n`` is None or too large)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def holdout_split(
    ds: datasets.Dataset, n_holdout: int, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split a train set into (train, held-out) by a fixed seed, for tuning without dev."""
    parts = ds.train_test_split(test_size=n_holdout, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
