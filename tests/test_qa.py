"""SQuAD v1.1: the metric by hand, and pre/post-processing round trips on real dev data."""

from __future__ import annotations

import numpy as np
import pytest

from obert.data.qa import (
    load_squad_json,
    postprocess,
    prepare_eval_features,
    prepare_train_features,
    split_articles,
)
from obert.data.qa_metrics import exact_match, f1, normalize_answer, squad_scores
from obert.errors import ObertError


def test_metric_by_hand():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # pred "tower in paris" vs gold "eiffel tower": 1 shared; P = 1/3, R = 1/2, F1 = 0.4
    assert f1("Tower in Paris", "the Eiffel Tower") == pytest.approx(0.4)
    assert f1("x b b", "b b c") == pytest.approx(2 / 3)  # multiplicity: 2 shared of 3 and 3
    assert f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is dropped: P = 1, R = 2/3
    assert f1("the", "a") == 0.0  # both normalize to nothing
    golds = {"q1": ["Denver Broncos", "The Broncos"], "q2": ["1990s", "in the 1990s"],
             "q3": ["Santa Clara, California"]}
    preds = {"q1": "broncos", "q2": "the 1990s", "q3": "California"}
    # q1: EM 1 (vs "The Broncos"); q2: EM 1; q3: EM 0, P = 1, R = 1/3, F1 = 1/2
    s = squad_scores(preds, golds)
    assert s["exact_match"] == pytest.approx(200 / 3)
    assert s["f1"] == pytest.approx(100 * 2.5 / 3)
    assert squad_scores({}, {"q": ["x"]}) == {"exact_match": 0.0, "f1": 0.0}


@pytest.fixture(scope="module")
def squad_dev(shared_data):
    path = shared_data / "squad" / "dev-v1.1.json"
    if not path.is_file():
        pytest.skip("squad/dev-v1.1.json not found")
    return load_squad_json(path)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def test_load_and_article_split(squad_dev, tmp_path):
    assert len(squad_dev) == 10570 and len(set(squad_dev["title"])) == 48
    train, held = split_articles(squad_dev, 8)
    assert len(train) + len(held) == 10570
    assert not set(train["title"]) & set(held["title"])
    assert len(set(held["title"])) == 8
    with pytest.raises(ObertError, match="between 1 and 47"):
        split_articles(squad_dev, 48)
    bad = tmp_path / "bad.json"
    bad.write_text("{\"version\": 1}")
    with pytest.raises(ObertError, match="not a SQuAD-format JSON"):
        load_squad_json(bad)


@pytest.mark.parametrize("max_length, stride", [(384, 128), (96, 32)])
def test_gold_positions_round_trip(squad_dev, tokenizer, max_length, stride):
    ex = squad_dev.select(range(300))
    kw = dict(max_length=max_length, doc_stride=stride)
    train = prepare_train_features(ex[:], tokenizer, **kw)
    feats = prepare_eval_features(ex[:], tokenizer, **kw)
    n = len(feats["input_ids"])
    assert len(train["input_ids"]) == n and n >= len(ex)
    width = max(len(x) for x in feats["input_ids"])
    start = np.full((n, width), -1e4)
    end = np.full((n, width), -1e4)
    for i, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"], strict=True)):
        if s != 0:
            start[i, s], end[i, e] = 10.0, 10.0
    import datasets

    preds = postprocess(ex, datasets.Dataset.from_dict(dict(feats)), start, end)
    # The span is read back from the context through the offsets. A gold answer that ends or
    # starts inside a word piece ("8" of "18", "gold" of "golden") cannot be a token span;
    # every other one must come back exactly.
    aligned = {}
    for r in ex:
        a0 = r["answers"]["answer_start"][0]
        a1 = a0 + len(r["answers"]["text"][0])
        offs = tokenizer(r["context"], return_offsets_mapping=True,
                         add_special_tokens=False)["offset_mapping"]
        if a0 in {o[0] for o in offs} and a1 in {o[1] for o in offs}:
            aligned[r["id"]] = [r["answers"]["text"][0]]
    assert len(aligned) >= 0.95 * len(ex)
    assert squad_scores(preds, aligned)["exact_match"] == 100.0
    golds = {r["id"]: r["answers"]["text"] for r in ex}
    assert squad_scores(preds, golds)["exact_match"] >= 96.0


def test_windows_cover_every_answer_that_fits(squad_dev, tokenizer):
    ex = squad_dev.select(range(0, 3000, 7))
    max_length, stride = 128, 48
    train = prepare_train_features(ex[:], tokenizer, max_length=max_length, doc_stride=stride)
    enc = tokenizer(list(ex["question"]), list(ex["context"]), truncation="only_second",
                    max_length=max_length, stride=stride, return_overflowing_tokens=True)
    covered = {}
    for i, m in enumerate(enc["overflow_to_sample_mapping"]):
        covered[m] = covered.get(m, False) or train["start_positions"][i] != 0
    checked = 0
    for j, r in enumerate(ex):
        q = len(tokenizer(r["question"], add_special_tokens=False)["input_ids"])
        a = len(tokenizer(r["answers"]["text"][0], add_special_tokens=False)["input_ids"])
        # room for context in one window, minus the stride's overlap slack
        if a + 2 <= min(stride, max_length - q - 3):
            checked += 1
            assert covered[j], f"answer {r['answers']['text'][0]!r} of {r['id']} in no window"
    assert checked > 300


def test_long_question_is_cut(tokenizer):
    ex = {"id": ["x"], "title": ["t"], "question": [" why " * 200],
          "context": ["The answer is here."], "answers": [{"text": ["here"], "answer_start": [14]}]}
    feats = prepare_train_features(ex, tokenizer, max_length=96, doc_stride=32)
    assert len(feats["input_ids"]) == 1 and len(feats["input_ids"][0]) <= 96
    s, e = feats["start_positions"][0], feats["end_positions"][0]
    assert tokenizer.decode(feats["input_ids"][0][s:e + 1]) == "here"


@pytest.fixture(scope="module")
def tiny_qa_dir(tmp_path_factory, minilm_path):
    """A random 2-layer BERT reader with MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    out = tmp_path_factory.mktemp("tinyqa") / "tiny-qa"
    BertForQuestionAnswering(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


def _squad_args(shared_data):
    return ["--task", "squad", "--data-dir", str(shared_data / "squad"), "--split-articles", "2",
            "--max-seq-length", "192", "--doc-stride", "64", "--quiet"]


def test_squad_cli_finetune_oneshot_evaluate_prune(tmp_path, tiny_qa_dir, shared_data, capsys):
    import json

    from transformers import AutoModelForQuestionAnswering

    from obert.cli import main

    args = _squad_args(shared_data)
    ft = tmp_path / "ft"
    assert main(["finetune", "--model", str(tiny_qa_dir), *args, "--max-train-samples", "64",
                 "--epochs", "1", "--output", str(ft)]) == 0
    res = json.loads((ft / "eval_results.json").read_text())
    assert res["n"] == 378 and res["windows"] > res["n"] and 0 <= res["f1"] <= 100
    info = json.loads((ft / "sparsity.json").read_text())
    assert "last 2 articles" in info["data"]["split"]  # every output says which split

    os_out = tmp_path / "os"
    assert main(["oneshot", "--model", str(ft), *args, "--sparsity", "0.5", "--num-grads", "4",
                 "--fisher-block-size", "16", "--output", str(os_out)]) == 0
    info = json.loads((os_out / "sparsity.json").read_text())
    assert info["global_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert info["settings"]["fisher"]["grad_batch_size"] == 8  # the paper's SQuAD default
    model = AutoModelForQuestionAnswering.from_pretrained(os_out)  # loads without obert
    assert model.qa_outputs.weight.shape[0] == 2

    capsys.readouterr()
    assert main(["evaluate", "--model", str(os_out), *args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "squad" and out["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert set(out) >= {"exact_match", "f1", "n"}

    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 16\nlr: {max: 1e-3, min: 1e-4}\n"
                      "pruning: {method: magnitude, init_sparsity: 0.5, final_sparsity: 0.7, "
                      "start_epoch: 0.25, end_epoch: 0.75, update_frequency: 0.25}\n")
    pr = tmp_path / "pr"
    # the fine-tuned reader is its own teacher: KD on the start and end logits
    assert main(["prune", "--recipe", str(recipe), "--model", str(ft), *args,
                 "--max-train-samples", "64", "--logging-steps", "4", "--output", str(pr)]) == 0
    info = json.loads((pr / "sparsity.json").read_text())
    assert info["global_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert info["settings"]["teacher"] == str(ft)
    recs = [json.loads(x) for x in (pr / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_f1" in r for r in recs) and (pr / "plots" / "eval.png").is_file()


def test_squad_bad_input(tmp_path, tiny_qa_dir, shared_data, glue_dir, capsys):
    from obert.cli import main

    rc = main(["evaluate", "--model", str(tiny_qa_dir), "--task", "squad", "--data-dir",
               str(tmp_path)])
    assert rc == 2 and "dev-v1.1.json" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(tiny_qa_dir), "--task", "sst2", "--data-dir",
               str(glue_dir), "--split-articles", "2"])
    assert rc == 2 and "--task squad only" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(tiny_qa_dir), *_squad_args(shared_data)[:-5],
               "--split-articles", "99"])
    assert rc == 2 and "between 1 and 47" in capsys.readouterr().err


def test_squad_from_files_the_test_writes(tmp_path, tiny_qa_dir, capsys):
    import json

    from obert.cli import main

    ctx = "Obert was written in 2026 by a small team in Vienna."
    data = {"version": "1.1", "data": [{"title": f"T{i}", "paragraphs": [{"context": ctx, "qas": [
        {"id": f"q{i}a", "question": "When was Obert written?",
         "answers": [{"text": "2026", "answer_start": ctx.index("2026")}]},
        {"id": f"q{i}b", "question": "Where was Obert written?",
         "answers": [{"text": "Vienna", "answer_start": ctx.index("Vienna")},
                     {"text": "in Vienna", "answer_start": ctx.index("in Vienna")}]},
    ]}]} for i in range(3)]}
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(tiny_qa_dir), "--task", "squad", "--train-file",
                 str(path), "--validation-file", str(path), "--epochs", "1", "--output",
                 str(out), "--quiet"]) == 0
    res = json.loads((out / "eval_results.json").read_text())
    assert res["n"] == 6 and res["windows"] == 6
    assert main(["evaluate", "--model", str(out), "--task", "squad", "--validation-file",
                 str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_bundled_squad_recipe_runs_unchanged(tmp_path, tiny_qa_dir, shared_data):
    """obert-squad-90 as shipped (30 epochs, m = 1024, B = 50, KD), on 8 questions."""
    import json

    from obert.cli import main

    ft = tmp_path / "ft"
    args = ["--task", "squad", "--data-dir", str(shared_data / "squad"), "--split-articles", "1",
            "--quiet"]
    assert main(["finetune", "--model", str(tiny_qa_dir), *args, "--max-train-samples", "8",
                 "--epochs", "1", "--output", str(ft)]) == 0
    out = tmp_path / "pr"
    assert main(["prune", "--recipe", "obert-squad-90", "--model", str(ft), *args,
                 "--max-train-samples", "8", "--logging-steps", "10", "--output", str(out)]) == 0
    info = json.loads((out / "sparsity.json").read_text())
    assert info["global_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert [h["step"] for h in info["pruning_steps"]] == [2, 6, 10, 14, 18, 22, 26]
    assert info["settings"]["recipe"]["max_seq_length"] == 384
