"""Load GLUE splits from a local folder, explicit files, or the Hugging Face hub.

Every loader returns a ``datasets.Dataset`` with the task's canonical text columns (the hub's
names) and an integer ``label`` (a float for STS-B; -1 where a test split has no labels).
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from pathlib import Path

import datasets

from obert.data.checks import require_dir
from obert.data.tasks import TaskSpec
from obert.errors import ObertError

GLUE_DIR_ENV = "OBERT_GLUE_DIR"
logger = logging.getLogger(__name__)
_TABLE_EXTS = (".parquet", ".csv", ".json", ".jsonl", ".tsv")


def read_glue_tsv(path: str | os.PathLike, task: TaskSpec) -> datasets.Dataset:
    """Read one official GLUE TSV: tab-separated, no quoting, no NA conversion, BOM-tolerant."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise ObertError(f"{path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except (OSError, csv.Error) as e:
        raise ObertError(f"cannot read {path}: {_first_line(e)}") from None
    if not rows:
        raise ObertError(f"{path} is empty: expected a GLUE TSV with a header line")
    # CoLA's train/dev have no header; its test file has one ("index", "sentence").
    if task.tsv_no_header and rows[0][0] not in ("index", "id"):
        header, body = list(task.tsv_no_header), rows
        mapping = {c: c for c in header}
    else:
        header, body = rows[0], rows[1:]
        mapping = task.tsv_columns
    columns: dict[str, list] = {}
    for src, dst in mapping.items():
        if src in header:
            columns[dst] = []
    missing = [c for c in (*task.text_keys,) if c not in columns]
    if missing:
        wanted = [s for s, d in mapping.items() if d in missing]
        raise ObertError(
            f"{path} lacks column(s) {', '.join(wanted)} for task {task.name}: "
            f"found {', '.join(header)}; pass the official GLUE file"
        )
    index = {dst: header.index(src) for src, dst in mapping.items() if dst in columns}
    skipped = 0
    for row in body:
        if len(row) != len(header):
            skipped += 1  # a handful of malformed lines exist in QQP/MNLI train
            continue
        for dst, i in index.items():
            columns[dst].append(row[i])
    if skipped:
        logger.warning("%s: skipped %d malformed line(s) with a wrong number of fields", path, skipped)
    if "label" in columns:
        columns["label"] = [_parse_label(v, task, path) for v in columns["label"]]
    else:
        columns["label"] = [-1] * len(columns[task.text_keys[0]])
    keep = {k: columns[k] for k in (*task.text_keys, "label")}
    ds = datasets.Dataset.from_dict(keep)
    return ds


def _parse_label(value: str, task: TaskSpec, path) -> float | int:
    if task.tsv_label_map:
        if value not in task.tsv_label_map:
            raise ObertError(
                f"{path}: label {value!r} is not one of {sorted(task.tsv_label_map)}"
            )
        return task.tsv_label_map[value]
    try:
        return float(value) if task.is_regression else int(value)
    except ValueError:
        raise ObertError(f"{path}: label {value!r} is not a number") from None


def read_table(path: str | os.PathLike, task: TaskSpec) -> datasets.Dataset:
    """Read a CSV/JSON/parquet file in the hub's layout (or a GLUE TSV) and check its columns."""
    path = str(path)
    if not os.path.isfile(path):
        raise ObertError(f"data file {path} does not exist")
    if path.endswith(".tsv"):
        return read_glue_tsv(path, task)
    kind = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}.get(
        Path(path).suffix
    )
    if kind is None:
        raise ObertError(f"{path}: unsupported file type; use .tsv, .csv, .json, .jsonl or .parquet")
    if kind != "parquet" and _rows_in_text(path, kind) == 0:
        return _check_columns(_empty(task), task, path)  # check_split then says "no rows"
    try:
        ds = datasets.load_dataset(kind, data_files=path, split="train")
    except Exception as e:  # pyarrow/json/csv parse errors, bad bytes: one line naming the file
        raise ObertError(f"cannot read {path} as {kind} ({type(e).__name__}: {_first_line(e)}): "
                         "check the file") from None
    return _check_columns(ds, task, path)


def _rows_in_text(path: str, kind: str) -> int:
    """0 if a CSV has no line after its header, or a JSON file no non-blank line; else 1."""
    need = 2 if kind == "csv" else 1
    seen = 0
    with open(path, "rb") as f:
        for line in f:
            seen += bool(line.strip())
            if seen >= need:
                return 1
    return 0


def _empty(task: TaskSpec) -> datasets.Dataset:
    return datasets.Dataset.from_dict({**{k: [] for k in task.text_keys}, "label": []})


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def _check_columns(ds: datasets.Dataset, task: TaskSpec, where: str) -> datasets.Dataset:
    missing = [c for c in task.text_keys if c not in ds.column_names]
    if missing:
        raise ObertError(
            f"{where} lacks column(s) {', '.join(missing)} for task {task.name}: "
            f"found {', '.join(ds.column_names)}"
        )
    if "label" not in ds.column_names:
        ds = ds.add_column("label", [-1] * len(ds))
    return ds.select_columns([*task.text_keys, "label"])


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
        return read_table(data_file, task)
    data_dir = data_dir or os.environ.get(GLUE_DIR_ENV) or None
    if data_dir is not None:
        require_dir(data_dir)
        files = find_local_files(task, split, data_dir)
        if not files:
            raise ObertError(
                f"no {split} data for {task.name} under {data_dir}: expected "
                f"{task.glue_dir}/{task.tsv_files[split]} (GLUE layout) or "
                f"{task.hub_splits[split]}-*.parquet (hub layout)"
            )
        parts = [read_table(f, task) for f in files]
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task.hub_config, split=task.hub_splits[split])
    except Exception as e:  # network, hub, or cache problems all mean the same to a user
        raise ObertError(
            f"could not load glue/{task.hub_config} from the Hugging Face hub "
            f"({type(e).__name__}); pass --data-dir with a local GLUE folder or set {GLUE_DIR_ENV}"
        ) from None
    return _check_columns(ds, task, f"glue/{task.hub_config}")


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
