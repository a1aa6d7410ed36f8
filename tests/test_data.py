"""Data loading (real GLUE files read in place, small files written here) and GLUE metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obert.data.glue import find_local_files, load_split, read_glue_tsv
from obert.data.metrics import compute_metrics
from obert.data.tasks import TASKS, get_task
from obert.errors import ObertError


def _raw_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Split a GLUE TSV by hand (no csv module, so no quoting rules at all): header, rows."""
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    rows = [line.split("\t") for line in lines if line]
    return rows[0], rows[1:]


# --------------------------------------------------------------------------- real GLUE TSVs

# Row counts from /work/shared/data/README.md.
GLUE_COUNTS = [
    ("sst2", "dev", 872),
    ("sst2", "train", 67_349),
    ("mrpc", "dev", 408),
    ("mrpc", "train", 3_668),
    ("rte", "dev", 277),
    ("rte", "train", 2_490),
    ("qnli", "dev", 5_463),
]


@pytest.mark.parametrize(("task", "split", "n"), GLUE_COUNTS)
def test_glue_tsv_row_counts(glue_dir: Path, task: str, split: str, n: int) -> None:
    spec = get_task(task)
    ds = load_split(spec, split, glue_dir)
    assert len(ds) == n
    assert ds.column_names == [*spec.text_keys, "label"]
    assert set(ds["label"]) <= set(range(spec.num_labels))


def test_glue_test_split_has_no_labels(glue_dir: Path) -> None:
    ds = load_split(get_task("sst2"), "test", glue_dir)
    assert len(ds) == 1_821
    assert set(ds["label"]) == {-1}


def test_sst2_dev_labels_and_text(glue_dir: Path) -> None:
    ds = load_split(get_task("sst2"), "dev", glue_dir)
    assert set(ds["label"]) == {0, 1}
    _, rows = _raw_rows(glue_dir / "SST-2" / "dev.tsv")
    assert ds["sentence"] == [r[0] for r in rows]
    assert ds["label"] == [int(r[1]) for r in rows]


def test_mrpc_dev_bom_header_and_columns(glue_dir: Path) -> None:
    path = glue_dir / "MRPC" / "dev.tsv"
    # The BOM sits in front of "Quality", the label column: a loader that ignored it would
    # find no label column at all.
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    ds = load_split(get_task("mrpc"), "dev", glue_dir)
    assert ds.column_names == ["sentence1", "sentence2", "label"]
    assert len(ds) == 408
    assert set(ds["label"]) == {0, 1}
    header, rows = _raw_rows(path)
    assert header == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    assert ds["label"] == [int(r[0]) for r in rows]
    assert ds["sentence1"] == [r[3] for r in rows]
    assert ds["sentence2"] == [r[4] for r in rows]


def test_quote_characters_survive(glue_dir: Path) -> None:
    """QUOTE_NONE: a `"` opening a field is text, not the start of a quoted multi-line field."""
    ds = load_split(get_task("mrpc"), "dev", glue_dir)
    _, rows = _raw_rows(glue_dir / "MRPC" / "dev.tsv")
    quoted = [i for i, r in enumerate(rows) if r[4].startswith('"')]
    assert quoted, "MRPC dev should have a sentence that starts with a quote"
    for i in quoted:
        assert ds[i]["sentence2"] == rows[i][4]
    # The first such row has an unbalanced quote; csv's default quoting would eat lines after it.
    assert ds[0]["sentence2"] == (
        '"The foodservice pie business does not fit our long-term growth strategy.'
    )
    assert sum('"' in s for s in [*ds["sentence1"], *ds["sentence2"]]) >= 10


@pytest.mark.parametrize("task", ["rte", "qnli"])
def test_entailment_labels_mapped(glue_dir: Path, task: str) -> None:
    spec = get_task(task)
    ds = load_split(spec, "dev", glue_dir)
    header, rows = _raw_rows(glue_dir / spec.glue_dir / "dev.tsv")
    raw = [r[header.index("label")] for r in rows]
    assert set(raw) == {"entailment", "not_entailment"}
    expected = [{"entailment": 0, "not_entailment": 1}[v] for v in raw]
    assert ds["label"] == expected
    assert ds[spec.text_keys[0]] == [r[1] for r in rows]


def test_rte_dev_label_counts(glue_dir: Path) -> None:
    labels = load_split(get_task("rte"), "dev", glue_dir)["label"]
    assert (labels.count(0), labels.count(1)) == (146, 131)


# --------------------------------------------------------------------- hub parquet layout


@pytest.mark.parametrize(
    ("task", "split", "n", "labels"),
    [
        ("mnli", "dev", 9_815, {0, 1, 2}),
        ("mnli", "dev_mm", 9_832, {0, 1, 2}),
        ("qqp", "dev", 40_430, {0, 1}),
    ],
)
def test_hub_parquet_layout(shared_data: Path, task: str, split: str, n: int, labels: set) -> None:
    spec = get_task(task)
    ds = load_split(spec, split, shared_data)
    assert len(ds) == n
    assert ds.column_names == [*spec.text_keys, "label"]  # idx is dropped
    assert set(ds["label"]) == labels


def test_mnli_split_picks_the_matching_parquet(shared_data: Path) -> None:
    spec = get_task("mnli")
    (matched,) = find_local_files(spec, "dev", shared_data)
    (mismatched,) = find_local_files(spec, "dev_mm", shared_data)
    assert Path(matched).name.startswith("validation_matched-")
    assert Path(mismatched).name.startswith("validation_mismatched-")
    # A task folder works as data_dir too.
    assert len(load_split(spec, "dev", shared_data / "mnli")) == 9_815


# ----------------------------------------------------------------- small files written here

COLA_ROWS = [
    ("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
    ("gj04", "0", "*", 'They drank the pub "dry".'),
    ("clc95", "1", "", "The more we study verbs, the crazier they get."),
]


def _write_cola(root: Path) -> Path:
    cola = root / "CoLA"
    cola.mkdir(parents=True)
    body = "".join("\t".join(r) + "\n" for r in COLA_ROWS)
    (cola / "train.tsv").write_text(body)
    (cola / "dev.tsv").write_text(body[: body.index("\n") + 1])
    # CoLA's test file, unlike train/dev, has a header.
    (cola / "test.tsv").write_text("index\tsentence\n0\tBill whistled past the house.\n")
    return root


def test_cola_without_header(tmp_path: Path) -> None:
    spec = get_task("cola")
    root = _write_cola(tmp_path)
    train = load_split(spec, "train", root)
    assert len(train) == 3  # the first line is data, not a header
    assert train["sentence"] == [r[3] for r in COLA_ROWS]
    assert train["label"] == [1, 0, 1]
    assert len(load_split(spec, "dev", root)) == 1
    test = load_split(spec, "test", root)
    assert test["sentence"] == ["Bill whistled past the house."]
    assert test["label"] == [-1]


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


def test_stsb_regression_labels(tmp_path: Path) -> None:
    d = tmp_path / "STS-B"
    d.mkdir()
    rows = [
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing.\t5.000",
        "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA young child is riding a horse.\tA child is riding a horse.\t4.750",
        "2\tmain-news\theadlines\t2013\t0001\tnone\tnone\t\"Quoted\" start.\tAnother one.\t0.6",
    ]
    (d / "dev.tsv").write_text(STSB_HEADER + "\n" + "\n".join(rows) + "\n")
    spec = get_task("STS-B")  # the GLUE folder name works as a task name
    assert spec.is_regression
    ds = load_split(spec, "dev", tmp_path)
    assert ds.column_names == ["sentence1", "sentence2", "label"]
    assert ds["label"] == pytest.approx([5.0, 4.75, 0.6])
    assert ds.features["label"].dtype.startswith("float")
    assert ds["sentence1"][2] == '"Quoted" start.'


HUB_ROWS = {
    "sentence": ['a "quoted", comma-laden line', "plain", "third"],
    "label": [1, 0, 1],
    "idx": [0, 1, 2],
}


@pytest.mark.parametrize("ext", ["csv", "json", "jsonl", "parquet"])
def test_explicit_hub_layout_files(tmp_path: Path, ext: str) -> None:
    df = pd.DataFrame(HUB_ROWS)
    path = tmp_path / f"validation.{ext}"
    if ext == "csv":
        df.to_csv(path, index=False)
    elif ext == "parquet":
        df.to_parquet(path)
    else:  # both are read as JSON lines
        df.to_json(path, orient="records", lines=True)
    ds = load_split(get_task("sst2"), "dev", data_file=path)
    assert ds.column_names == ["sentence", "label"]
    assert ds["sentence"] == HUB_ROWS["sentence"]
    assert ds["label"] == HUB_ROWS["label"]


def test_explicit_file_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in ["x", "y"]))
    ds = load_split(get_task("sst2"), "test", data_file=path)
    assert ds["label"] == [-1, -1]


def test_hub_layout_folder(tmp_path: Path) -> None:
    """A folder of hub-style split files (no GLUE TSVs) is found by split name."""
    pd.DataFrame(HUB_ROWS).to_parquet(tmp_path / "train-00000-of-00001.parquet")
    ds = load_split(get_task("sst2"), "train", tmp_path)
    assert ds["sentence"] == HUB_ROWS["sentence"]


def test_task_names_and_aliases() -> None:
    assert get_task("SST-2") is TASKS["sst2"]
    assert get_task("MNLI-m") is TASKS["mnli"]
    assert get_task("QQP").name == "qqp"
    assert get_task("cola").main_metric == "matthews_correlation"


# ----------------------------------------------------------------------------------- errors


def _one_line(err: pytest.ExceptionInfo[ObertError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def test_error_unknown_task() -> None:
    with pytest.raises(ObertError) as err:
        get_task("glue-sst")
    msg = _one_line(err)
    assert "unknown task 'glue-sst'" in msg
    assert "sst2" in msg and "mnli" in msg  # lists the choices


def test_error_unknown_split(glue_dir: Path) -> None:
    with pytest.raises(ObertError) as err:
        load_split(get_task("sst2"), "dev_mm", glue_dir)
    assert "train, dev, test" in _one_line(err)


def test_error_data_dir_without_split(tmp_path: Path, glue_dir: Path) -> None:
    with pytest.raises(ObertError) as err:
        load_split(get_task("sst2"), "train", tmp_path)
    msg = _one_line(err)
    assert str(tmp_path) in msg and "SST-2/train.tsv" in msg
    # QNLI has no train set here: the message names the file it looked for.
    with pytest.raises(ObertError) as err:
        load_split(get_task("qnli"), "train", glue_dir)
    assert "QNLI/train.tsv" in _one_line(err)


def test_error_data_dir_missing(tmp_path: Path) -> None:
    with pytest.raises(ObertError) as err:
        load_split(get_task("sst2"), "dev", tmp_path / "nope")
    assert "does not exist" in _one_line(err)


def test_error_missing_text_column(tmp_path: Path) -> None:
    csv = tmp_path / "train.csv"
    csv.write_text("text,label\nhello,1\n")
    with pytest.raises(ObertError) as err:
        load_split(get_task("sst2"), "train", data_file=csv)
    msg = _one_line(err)
    assert "sentence" in msg and "found text, label" in msg
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence1\tlabel\nonly one\tentailment\n")
    with pytest.raises(ObertError) as err:
        read_glue_tsv(tsv, get_task("rte"))
    assert "sentence2" in _one_line(err)


def test_error_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "dev.txt"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(ObertError) as err:
        load_split(get_task("sst2"), "dev", data_file=path)
    assert "unsupported file type" in _one_line(err)


def test_error_nonexistent_data_file(tmp_path: Path) -> None:
    with pytest.raises(ObertError) as err:
        load_split(get_task("sst2"), "dev", data_file=tmp_path / "missing.csv")
    msg = _one_line(err)
    assert "missing.csv" in msg and "does not exist" in msg


def test_error_bad_label(tmp_path: Path) -> None:
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ObertError) as err:
        load_split(get_task("rte"), "dev", tmp_path)
    assert "'maybe'" in _one_line(err)


# ---------------------------------------------------------------------------------- metrics


def _onehot(preds: list[int], n: int = 2) -> np.ndarray:
    """Logits whose argmax is ``preds``."""
    return np.eye(n)[preds]


def test_accuracy() -> None:
    out = compute_metrics(get_task("sst2"), _onehot([0, 1, 0, 0]), np.array([0, 1, 1, 0]))
    assert out == {"accuracy": 0.75}


def test_accuracy_three_classes() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.1, 3.0], [0.0, 5.0, 1.0]])
    out = compute_metrics(get_task("mnli"), logits, np.array([0, 2, 2]))
    assert out["accuracy"] == pytest.approx(2 / 3)


def test_f1_positive_class() -> None:
    # TP=2, FP=1, FN=1 -> precision 2/3, recall 2/3, F1 2/3; 3 of 5 right.
    out = compute_metrics(get_task("mrpc"), _onehot([1, 0, 1, 0, 1]), np.array([1, 1, 0, 0, 1]))
    assert set(out) == {"accuracy", "f1"}
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["f1"] == pytest.approx(2 / 3)
    # F1 is of class 1 only (not macro): all-negative predictions score 0 despite 75% accuracy.
    out = compute_metrics(get_task("qqp"), _onehot([0, 0, 0, 0]), np.array([0, 0, 0, 1]))
    assert out == {"accuracy": 0.75, "f1": 0.0}


def test_matthews_correlation() -> None:
    # TP=1, TN=2, FP=0, FN=1: (1·2 − 0·1) / sqrt(1·2·2·3) = 2/sqrt(12).
    out = compute_metrics(get_task("cola"), _onehot([1, 0, 0, 0]), np.array([1, 1, 0, 0]))
    assert out["matthews_correlation"] == pytest.approx(2 / np.sqrt(12))
    assert out["accuracy"] == pytest.approx(0.75)
    out = compute_metrics(get_task("cola"), _onehot([1, 0, 1, 0]), np.array([0, 1, 0, 1]))
    assert out["matthews_correlation"] == pytest.approx(-1.0)


def test_pearson_spearman() -> None:
    spec = get_task("stsb")
    # x = 1..4, y = (1, 2, 3, 5): Σdxdy = 6.5, Σdx² = 5, Σdy² = 8.75; ranks agree exactly.
    out = compute_metrics(spec, np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([1, 2, 3, 5.0]))
    assert set(out) == {"pearson", "spearmanr"}
    assert out["pearson"] == pytest.approx(6.5 / np.sqrt(5 * 8.75))
    assert out["spearmanr"] == pytest.approx(1.0)
    # Ranks (1, 3, 2, 4) vs (1, 2, 3, 4): 1 − 6·Σd²/(n(n²−1)) = 1 − 12/60 = 0.8.
    out = compute_metrics(spec, np.array([1.0, 3.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert out["spearmanr"] == pytest.approx(0.8)
    assert out["pearson"] == pytest.approx(0.8)  # values equal ranks here
    out = compute_metrics(spec, np.array([[0.5], [0.2], [0.1]]), np.array([1.0, 2.0, 3.0]))
    assert out["spearmanr"] == pytest.approx(-1.0)
