"""The row schemas (obert.data.schema): every format's bad rows end in one line naming the
file, the line (or row) and the field; good rows read as before; real data passes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from obert.data.files import read_records
from obert.data.glue import load_split
from obert.data.mlm import read_text_file
from obert.data.qa import load_squad_json
from obert.data.schema.base import MISSING, kind
from obert.data.schema.glue import check_label
from obert.data.schema.squad import squad_rows
from obert.data.source import DataArgs
from obert.data.tasks import get_task
from obert.errors import ObertError

SST2, STSB, RTE = get_task("sst2"), get_task("stsb"), get_task("rte")


def _error(fn, *args, **kw) -> str:
    with pytest.raises(ObertError) as e:
        fn(*args, **kw)
    message = str(e.value)
    assert "\n" not in message
    return message


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- GLUE ---------------------------------------------------------------------------------


TEXT_FAULTS = [
    (None, "sentence is missing"), (5, "sentence is a number (5), not text"),
    (["a"], "sentence is a list (['a']), not text"), ("", "sentence is empty"),
    (" \t", "sentence is blank (' \\t')"), (True, "sentence is true (a boolean), not text"),
]


@pytest.mark.parametrize("value, what, ext", [(*f, "jsonl") for f in TEXT_FAULTS] + [
    (*f, "parquet") for f in TEXT_FAULTS if isinstance(f[0], str | None)])  # one type a column
def test_glue_text_must_be_text(tmp_path, value, what, ext) -> None:
    rows = [{"sentence": "fine", "label": 1}, {"sentence": value, "label": 0}]
    path = tmp_path / f"train.{ext}"
    if ext == "jsonl":
        _jsonl(path, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    at = "line 2" if ext == "jsonl" else "row 2"
    msg = _error(load_split, SST2, "train", data_file=path)
    assert msg.startswith(f"{path}, {at}: {what}; each sst2 row needs sentence as text"), msg


def test_glue_labels_in_every_format(tmp_path) -> None:
    csv = tmp_path / "dev.csv"
    csv.write_text('sentence,label\n"a, quoted\nline",1\nb,2\n')
    assert "dev.csv, line 4: label 2 is not one of 0, 1" in _error(load_split, SST2, "dev",
                                                                    data_file=csv)
    tsv = tmp_path / "RTE" / "dev.tsv"
    tsv.parent.mkdir()
    tsv.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\t\n")
    assert "dev.tsv, line 3: label is missing (a row without a label)" in _error(
        load_split, RTE, "dev", tmp_path)
    bad = _jsonl(tmp_path / "x.jsonl", [{"sentence": "a", "label": "1"}])
    assert "line 1: label is text ('1'), not a whole number" in _error(
        load_split, SST2, "train", data_file=bad)
    # a test split needs no label; a dev split does, from every source
    ok = _jsonl(tmp_path / "t.jsonl", [{"sentence": "a"}, {"sentence": "b", "label": -1}])
    assert load_split(SST2, "test", data_file=ok)["label"] == [-1, -1]
    assert "t.jsonl, line 1: label is missing" in _error(load_split, SST2, "dev", data_file=ok)


def test_glue_rows_that_are_not_objects_and_absent_columns(tmp_path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"sentence": "a", "label": 1}\n[1, 2]\n')
    assert "a.jsonl, line 2: it is a list ([1, 2]), not an object" in _error(
        load_split, SST2, "train", data_file=path)
    none = _jsonl(tmp_path / "b.jsonl", [{"text": "a", "label": 1}])
    assert "lacks column(s) sentence for task sst2: found text, label" in _error(
        load_split, SST2, "train", data_file=none)


@pytest.mark.parametrize("value, ok", [
    (0, 0.0), (5, 5.0), (2.75, 2.75), (5.5, "5.5 is outside 0..5"), (-1, "-1 is outside 0..5"),
    (-0.01, "is outside"), (float("nan"), "nan is not a finite number"),
    ("3", "is text ('3'), not a number"), (None, "is missing (a row without a label)"),
])
def test_stsb_scores(value, ok) -> None:
    if isinstance(ok, float):
        assert check_label(value, STSB, labelled=True) == ok
    else:
        with pytest.raises(ValueError, match=re.escape(ok)):
            check_label(value, STSB, labelled=True)
    assert check_label(-1, STSB, labelled=False) == -1


@pytest.mark.parametrize("value, ok", [
    (1, 1), (1.0, 1), (0, 0), (2, "2 is not one of 0, 1"), (-1, "-1 means no label"),
    (True, "is true (a boolean)"), (1.5, "is a number (1.5), not a whole number"),
    (MISSING, "is missing"),
])
def test_class_labels(value, ok) -> None:
    if isinstance(ok, int):
        assert check_label(value, SST2, labelled=True) == ok
    else:
        with pytest.raises(ValueError, match=re.escape(ok)):
            check_label(value, SST2, labelled=True)


def test_stsb_csv_and_tsv_scores(tmp_path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("sentence1,sentence2,label\na,b,4.5\nc,d,5.5\n")
    assert "train.csv, line 3: label 5.5 is outside 0..5" in _error(
        load_split, STSB, "train", data_file=path)
    path.write_text("sentence1,sentence2,label\na,b,4.5\nc,d,0\n")
    assert load_split(STSB, "train", data_file=path)["label"] == [4.5, 0.0]


def test_not_utf8_names_the_line(tmp_path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"sentence": "a", "label": 1}\n{"sentence": "caf\xe9", "label": 0}\n')
    msg = _error(load_split, SST2, "train", data_file=path)
    assert "train.jsonl, line 2: the file is not UTF-8 text (byte 47 is 0xe9)" in msg


def test_jsonl_lines_split_at_newlines_only(tmp_path) -> None:
    """U+2028 inside a JSON string is not a line break (str.splitlines would say it is)."""
    path = _jsonl(tmp_path / "a.jsonl", [{"text": "one\u2028two"}, {"text": "three"}])
    path.write_text(path.read_text().replace("\\u2028", "\u2028"))
    records, _ = read_records(path)
    assert [at for at, _ in records] == ["line 1", "line 2"]
    assert read_text_file(path)["text"] == ["one\u2028two", "three"]


# --- SQuAD ----------------------------------------------------------------------------------


def _squad(tmp_path: Path, indent: int | None = 1, **answer) -> Path:
    qa = {"id": "q1", "question": "How?", "answers": [{"text": "fine", "answer_start": 13,
                                                       **answer}]}
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "The film was fine.",
                                                   "qas": [qa]}]}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc, indent=indent))
    return path


@pytest.mark.parametrize("answer, what", [
    ({"answer_start": "13"}, "answers[0].answer_start is text ('13'), not a whole number"),
    ({"answer_start": 13.0}, "answers[0].answer_start is a number (13.0), not a whole number"),
    ({"answer_start": -1}, "answers[0].answer_start -1 must be ≥ 0"),
    ({"answer_start": 18}, "answers[0].answer_start 18 is past the end of the context"),
    ({"answer_start": 15}, "answers[0].text 'fine' is not at answer_start 15: the context "
                           "there reads 'ne.'"),
    ({"text": ""}, "answers[0].text is empty"),
    ({"text": None}, "answers[0].text is missing"),
])
def test_squad_answers(tmp_path, answer, what) -> None:
    for indent, line in ((1, 10), (None, 1)):  # the id's line; a one-line file is line 1
        msg = _error(load_squad_json, _squad(tmp_path, indent, **answer))
        assert f"s.json, line {line}, article 1, paragraph 1, question 1 (id 'q1'): {what}" \
            in msg, msg


def test_squad_hub_rows() -> None:
    row = {"id": "a", "title": "t", "context": "The film was fine.", "question": "How?",
           "answers": {"text": ["fine"], "answer_start": [13]}}
    ds = squad_rows([row], "hub")
    assert ds[0]["answers"] == {"text": ["fine"], "answer_start": [13]}
    assert "hub, row 2: id 'a' is the id of an earlier question too (row 1)" in _error(
        squad_rows, [row, row], "hub")
    odd = {**row, "answers": {"text": ["fine"], "answer_start": []}}
    assert "hub, row 1: answers has 1 texts but 0 answer_starts" in _error(
        squad_rows, [odd], "hub")
    assert "hub, row 1: question is a number (3), not text" in _error(
        squad_rows, [{**row, "question": 3}], "hub")


def test_real_squad_dev_passes(shared_data) -> None:
    ds = load_squad_json(shared_data / "squad" / "dev-v1.1.json")
    assert len(ds) == 10570 and len(set(ds["id"])) == 10570


# --- multiple choice and MLM ------------------------------------------------------------------


def test_hub_layout_commonsense_qa_types() -> None:
    from obert.data.schema.choice import mc_dataset

    row = {"question": "q", "choices": {"label": ["A", "B"], "text": ["x", 7]}, "answerKey": "A"}
    assert "f, row 1: choices.text[1] is a number (7), not text" in _error(
        mc_dataset, [("row 1", row)], get_task("commonsense_qa"), "f")
    assert len(mc_dataset([("row 1", {**row, "choices": {"label": ["A", "B"],
                                                            "text": ["x", "y"]}})],
                          get_task("commonsense_qa"), "f", split="dev")) == 1


def test_kind_names_values_as_a_file_holds_them() -> None:
    assert kind(None) == kind(MISSING) == "missing"
    assert kind("13") == "text ('13')" and kind(5) == "a number (5)"
    assert kind({"a": 1}) == "an object ({'a': 1})" and kind(False) == "false (a boolean)"
    assert len(kind("x" * 500)) < 60


# --- before any model: DataArgs.check ---------------------------------------------------------


def test_check_reads_every_named_file_once(tmp_path) -> None:
    good = _jsonl(tmp_path / "train.jsonl", [{"sentence": "a", "label": 1}])
    bad = _jsonl(tmp_path / "dev.jsonl", [{"sentence": "a", "label": 7}])
    data = DataArgs("sst2", train_file=str(good), validation_file=str(bad))
    assert "dev.jsonl, line 1: label 7 is not one of 0, 1" in _error(data.check)
    data = DataArgs("sst2", train_file=str(good))
    data.check()
    assert data.load("train") is data.load("train")  # read once, not again after the check
    data.max_train_samples = 1
    assert len(data.load("train")) == 1  # other settings: read again


def test_hub_splits_are_checked_by_row(monkeypatch) -> None:
    """The hub's glue and rajpurkar/squad splits (no network: load_dataset is stood in for)."""
    import datasets

    hub = {"nyu-mll/glue": {"sentence": ["fine", "dull"], "label": [1, 2], "idx": [0, 1]},
           "rajpurkar/squad": {"id": ["a", "b"], "title": ["t", "t"],
                               "context": ["The film was fine."] * 2, "question": ["How?"] * 2,
                               "answers": [{"text": ["fine"], "answer_start": [13]},
                                           {"text": ["fine"], "answer_start": [3]}]}}
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda name, *a, **k: datasets.Dataset.from_dict(hub[name]))
    for env in ("OBERT_GLUE_DIR", "OBERT_SQUAD_DIR"):  # make test points these at local copies
        monkeypatch.delenv(env, raising=False)
    assert "glue/sst2 validation, row 2: label 2 is not one of 0, 1" in _error(
        load_split, SST2, "dev")
    hub["nyu-mll/glue"]["label"] = [1, 0]
    assert load_split(SST2, "dev")["label"] == [1, 0]
    assert "rajpurkar/squad, row 2: answers[0].text 'fine' is not at answer_start 3" in _error(
        load_split, get_task("squad"), "dev")
