"""Multiple choice: CommonsenseQA, WinoGrande and the generic form, read, encoded, trained,
pruned (embeddings and head included on request), compiled, exported and benchmarked."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from obert.cli import main
from obert.data.glue import load_split
from obert.data.mc import ChoiceCollator, encode_choices
from obert.data.schema.choice import mc_dataset
from obert.data.tasks import get_task
from obert.errors import ObertError

CSQA, WG, GENERIC = (get_task(n) for n in ("commonsense_qa", "winogrande", "multiple_choice"))


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def _rows(ds) -> list[tuple]:
    return [(r["stem"], r["choices"], r["label"]) for r in ds]


# --- reading -----------------------------------------------------------------------------


def test_commonsense_qa_official_jsonl_and_hub_parquet(shared_data, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    dev = load_split(CSQA, "dev", shared_data)
    assert len(dev) == 1221 and all(len(c) == 5 for c in dev["choices"])
    assert dev[0]["stem"].startswith("A revolving door is convenient")
    assert dev[0]["choices"][:2] == ["bank", "library"] and dev[0]["label"] == 0
    assert sorted(set(dev["label"])) == [0, 1, 2, 3, 4]
    assert len(load_split(CSQA, "train", shared_data)) == 9741
    # the hub's parquet layout (tau/commonsense_qa): the same rows
    raw = [json.loads(x) for x in
           (shared_data / "commonsense_qa" / "dev_rand_split.jsonl").read_text().splitlines()[:20]]
    table = pa.Table.from_pylist([{
        "id": r["id"], "question": r["question"]["stem"],
        "question_concept": r["question"]["question_concept"],
        "choices": {"label": [c["label"] for c in r["question"]["choices"]],
                    "text": [c["text"] for c in r["question"]["choices"]]},
        "answerKey": r["answerKey"]} for r in raw])
    hub = tmp_path / "commonsense_qa"
    hub.mkdir()
    pq.write_table(table, hub / "validation-00000-of-00001.parquet")
    assert _rows(load_split(CSQA, "dev", tmp_path)) == _rows(dev.select(range(20)))


def test_winogrande_jsonl_equals_parquet_and_is_cut_at_the_blank(shared_data):
    a = load_split(WG, "dev", None, shared_data / "winogrande" / "dev.jsonl")
    b = load_split(WG, "dev", None, shared_data / "winogrande" / "dev.parquet")
    assert len(a) == 1267 and _rows(a) == _rows(b)
    assert a[0]["stem"] == "Sarah was a much better surgeon than Maria so"
    assert a[0]["choices"] == ["Sarah always got the easier cases.",
                               "Maria always got the easier cases."]
    assert a[0]["label"] == 1  # answer "2"
    # the local folder picks the largest train_* size, or the one --dataset-config names
    assert len(load_split(WG, "train", shared_data)) == 10234
    assert len(load_split(WG, "train", shared_data, config="winogrande_l")) == 10234
    with pytest.raises(ObertError, match="no train data for winogrande"):
        load_split(WG, "train", shared_data, config="winogrande_xs")
    # "_'s" keeps its apostrophe: the option is glued to the rest of the sentence
    row = mc_dataset([("line 1", {"sentence": "I took _'s car.", "option1": "Ann",
                                       "option2": "Bob", "answer": "1"})], WG, "x")[0]
    assert row["stem"] == "I took" and row["choices"] == ["Ann's car.", "Bob's car."]


def test_generic_forms_read_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"context": "In the kitchen.", "question": "Where is the milk?",
             "choices": ["fridge", "sky", "car"], "label": 0},
            {"question": "What barks?", "choices": ["cat", "dog", "fish"], "label": 1}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # letters, choice objects and the answer's text are labels too
    (tmp_path / "b.json").write_text(json.dumps([
        {**rows[0], "choices": [{"label": "A", "text": "fridge"}, {"label": "B", "text": "sky"},
                                {"label": "C", "text": "car"}], "label": "A"},
        {**rows[1], "label": "dog"}]))
    (tmp_path / "c.csv").write_text("context,question,choice0,choice1,choice2,label\n"
                                    "In the kitchen.,Where is the milk?,fridge,sky,car,0\n"
                                    ",What barks?,cat,dog,fish,B\n")
    pq.write_table(pa.Table.from_pylist([{**r, "context": r.get("context", "")} for r in rows]),
                   tmp_path / "d.parquet")
    got = [_rows(load_split(GENERIC, "dev", None, tmp_path / f)) for f in
           ("a.jsonl", "b.json", "c.csv", "d.parquet")]
    want = [("In the kitchen. Where is the milk?", ["fridge", "sky", "car"], 0),
            ("What barks?", ["cat", "dog", "fish"], 1)]
    assert all(g == want for g in got), got
    # a folder of split files
    (tmp_path / "dev.jsonl").write_text((tmp_path / "a.jsonl").read_text())
    assert _rows(load_split(GENERIC, "dev", tmp_path)) == want


@pytest.mark.parametrize("task, record, message", [
    ("multiple_choice", {"question": "q", "choices": ["a", "b"], "label": 2}, "outside the 2"),
    ("multiple_choice", {"question": "q", "choices": ["a", " "], "label": 0}, "choice 1 is empty"),
    ("multiple_choice", {"question": "q", "choices": ["a"], "label": 0}, "needs ≥ 2"),
    ("multiple_choice", {"question": "q", "label": 0}, "no choices"),
    ("multiple_choice", {"question": 3, "choices": ["a", "b"], "label": 0}, "question is a number (3), not text"),
    ("winogrande", {"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"},
     "0 blanks"),
    ("winogrande", {"sentence": "_ and _", "option1": "a", "option2": "b", "answer": "1"},
     "2 blanks"),
    ("winogrande", {"sentence": "I saw _.", "option1": "a", "option2": "b", "answer": "3"},
     "answer '3' is not 1 or 2"),
    ("commonsense_qa", {"question": {"stem": "q", "choices": [{"label": "A", "text": "x"},
                                                              {"label": "B", "text": "y"}]},
                        "answerKey": "F"}, "answerKey 'F' is not one of"),
])
def test_bad_rows_name_their_line(task, record, message):
    good = {"multiple_choice": {"question": "q", "choices": ["a", "b"], "label": 0},
            "winogrande": {"sentence": "I saw _.", "option1": "a", "option2": "b",
                           "answer": "1"},
            "commonsense_qa": {"question": {"stem": "q", "choices": [
                {"label": "A", "text": "x"}, {"label": "B", "text": "y"}]}, "answerKey": "A"}}
    with pytest.raises(ObertError, match="f.jsonl, line 7: ") as e:
        mc_dataset([("line 3", good[task]), ("line 7", record)], get_task(task), "f.jsonl")
    assert message in str(e.value)


def test_choice_count_must_match_the_first_row():
    recs = [("line 1", {"question": "q", "choices": ["a", "b", "c"], "label": 0}),
            ("line 2", {"question": "q", "choices": ["a", "b"], "label": 0})]
    with pytest.raises(ObertError, match="line 2: it has 2 choices where the first row has 3"):
        mc_dataset(recs, GENERIC, "f.jsonl")


# --- tokens -------------------------------------------------------------------------------


def test_encoding_cuts_the_stem_never_the_choice(tokenizer):
    ds = mc_dataset([("line 4", {"question": "word " * 40, "choices": ["the red apple",
                                                                             "a blue car"],
                                      "label": 1})], GENERIC, "f")
    enc = encode_choices(ds, tokenizer, 16)
    for ids, choice in zip(enc[0]["input_ids"], ["the red apple", "a blue car"], strict=True):
        assert len(ids) == 16
        tail = tokenizer(choice, add_special_tokens=False)["input_ids"]
        assert ids[-len(tail) - 1:-1] == tail and ids[-1] == tokenizer.sep_token_id
    assert enc[0]["labels"] == 1
    long = mc_dataset([("line 9", {"question": "q", "choices": ["x " * 30, "y"],
                                        "label": 0})], GENERIC, "f")
    with pytest.raises(ObertError, match="line 9: the choice .* leaves no room for the stem"):
        encode_choices(long, tokenizer, 16)


def test_collator_pads_every_choice_to_the_longest(tokenizer):
    ds = mc_dataset([("line 1", {"question": "a b c d e f", "choices": ["x", "y z"],
                                      "label": 1}),
                          ("line 2", {"question": "q", "choices": ["x", "y"], "label": 0})],
                         GENERIC, "f")
    enc = encode_choices(ds, tokenizer, 32)
    batch = ChoiceCollator(tokenizer)([enc[0], enc[1]])
    longest = max(len(x) for row in enc["input_ids"] for x in row)
    assert batch["input_ids"].shape == (2, 2, longest)
    assert batch["labels"].tolist() == [1, 0]
    assert batch["attention_mask"].sum().item() == sum(len(x) for r in enc["input_ids"] for x in r)
    no_labels = ChoiceCollator(tokenizer)([{k: v for k, v in enc[0].items() if k != "labels"}])
    assert "labels" not in no_labels


def test_kd_on_choice_logits_by_hand():
    from obert.training.distill import distill_loss

    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    T = 2.0
    want = 0.0
    for si, ti in zip(s.tolist(), t.tolist(), strict=True):
        ps = [math.exp(x / T) for x in si]
        pt = [math.exp(x / T) for x in ti]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        want += sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    want = want / 2 * T * T
    assert distill_loss(None, s, t, 1.0, T).item() == pytest.approx(want, rel=2e-5)  # float32


# --- targets: embeddings and head ---------------------------------------------------------


def test_targets_embeddings_and_head(tiny_mc_dir):
    from transformers import AutoModelForMultipleChoice, BertConfig, BertForMaskedLM

    from obert.pruning.targets import find_targets

    model = AutoModelForMultipleChoice.from_pretrained(tiny_mc_dir)
    base = find_targets(model)
    assert len(base) == 12 and all(".layer." in n for n in base)
    both = find_targets(model, embeddings=True, head=True)
    extra = sorted(set(both) - set(base))
    assert extra == ["bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings",
                     "bert.embeddings.word_embeddings", "bert.pooler.dense", "classifier"]
    assert set(find_targets(model, head=True)) - set(base) == {"bert.pooler.dense", "classifier"}
    # an MLM decoder tied to the word embeddings is one weight: one target
    mlm = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32))
    found = find_targets(mlm, embeddings=True, head=True)
    ids = [id(m.weight) for m in found.values()]
    assert len(ids) == len(set(ids)) and "bert.embeddings.word_embeddings" in found
    assert "cls.predictions.decoder" not in found


# --- recipes --------------------------------------------------------------------------------


def test_smc_and_guideline_recipes(capsys):
    from obert.training.recipe import load_recipe, recipe_from_dict

    smc = load_recipe("smc-bench-gmp")
    assert smc.targets.embeddings and smc.targets.head and smc.distillation.hardness == 0
    assert smc.pruning.method == "magnitude" and smc.pruning.init_sparsity == 0
    assert smc.lr.schedule == "linear" and smc.lr.max == 1e-5 and smc.lr.min == 0
    assert smc.batch_size == 16
    plan = smc.plan(609)  # CommonsenseQA at batch 16: 3,000 updates, 150 of them warm-up
    assert plan.total_steps == 3000 and round(smc.lr.warmup_epochs * 609) == 150
    steps = sorted(plan.prune_at)
    assert steps[0] == 300 and steps[-1] == 2400 and steps[1] - steps[0] == 500
    for method in ("gmp", "obert"):
        r = load_recipe(f"{method}-mc-80")
        assert not r.targets.embeddings and not r.targets.head
        assert r.distillation.hardness == 1.0 and r.distillation.temperature > 2
        assert r.pruning.final_sparsity == 0.8 and r.batch_size == 16
    assert main(["recipe", "--target-sparsity", "0.9", "--epochs", "3", "--task",
                 "commonsense_qa", "--first-step", "0.3"]) == 0
    import yaml

    text = capsys.readouterr().out
    r = recipe_from_dict(yaml.safe_load(text))
    assert "--task mc --first-step 0.3" in text.splitlines()[0]
    assert r.pruning.init_sparsity == 0.3 and r.distillation.temperature == 5.5
    bad = {"epochs": 1, "targets": {"embeddings": "yes"}}
    with pytest.raises(ObertError, match="targets.embeddings must be true or false"):
        recipe_from_dict(bad)


def test_hub_code_paths_on_local_rows(monkeypatch, shared_data):
    """With no local files the loaders ask the hub: tau/commonsense_qa and allenai/winogrande
    (the size a config, winogrande_xl by default); here load_dataset hands back local rows."""
    import datasets

    calls = []
    wg = [json.loads(x) for x in (shared_data / "winogrande" / "dev.jsonl").read_text()
          .splitlines()[:5]]

    def fake(*args, split=None, **kw):
        calls.append((args, split))
        if args[0] == "allenai/winogrande":
            return datasets.Dataset.from_list(wg)
        return datasets.Dataset.from_list([{"id": "1", "question": "Where?", "question_concept":
                                            "x", "choices": {"label": ["A", "B"],
                                                             "text": ["here", "there"]},
                                            "answerKey": "B"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.delenv("OBERT_MC_DIR", raising=False)
    assert _rows(load_split(CSQA, "dev")) == [("Where?", ["here", "there"], 1)]
    assert len(load_split(WG, "train", config="winogrande_m")) == 5
    assert len(load_split(WG, "dev")) == 5
    assert calls == [(("tau/commonsense_qa",), "validation"),
                     (("allenai/winogrande", "winogrande_m"), "train"),
                     (("allenai/winogrande", "winogrande_xl"), "validation")]
    with pytest.raises(ObertError, match="reads local files"):
        load_split(GENERIC, "dev")


# --- every command on a tiny model ----------------------------------------------------------


def _mc_files(tmp: Path, shared: Path, n: int = 48) -> tuple[Path, Path]:
    """The first n CommonsenseQA train and dev questions (quick epochs, real text)."""
    out = []
    for split in ("train", "dev"):
        src = shared / "commonsense_qa" / f"{split}_rand_split.jsonl"
        dst = tmp / f"csqa-{split}.jsonl"
        dst.write_text("".join(x + "\n" for x in src.read_text().splitlines()[:n]))
        out.append(dst)
    return out[0], out[1]


@pytest.mark.slow
def test_multiple_choice_through_every_command(tmp_path, tiny_mc_dir, shared_data, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForMultipleChoice

    import obert.runtime as rt

    train, dev = _mc_files(tmp_path, shared_data)
    data = ["--task", "commonsense_qa", "--train-file", str(train), "--validation-file",
            str(dev), "--max-seq-length", "48", "--quiet"]
    ft = tmp_path / "ft"
    assert main(["finetune", "--model", str(tiny_mc_dir), *data, "--epochs", "1", "--lr", "1e-3",
                 "--batch-size", "8", "--output", str(ft)]) == 0
    res = json.loads((ft / "eval_results.json").read_text())
    assert res["n"] == 48 and 0 <= res["accuracy"] <= 1

    # one-shot oBERT with the embeddings and the head: exact global sparsity over all of them
    os_out = tmp_path / "os"
    assert main(["oneshot", "--model", str(ft), *data, "--sparsity", "0.6", "--num-grads", "8",
                 "--grad-batch-size", "4", "--prune-embeddings", "--prune-head",
                 "--output", str(os_out)]) == 0
    info = json.loads((os_out / "sparsity.json").read_text())
    assert info["global_sparsity"] == pytest.approx(0.6, abs=1e-4)
    tensors = info["tensors"]
    assert tensors["bert.embeddings.word_embeddings.weight"]["zeros"] > 0
    assert "classifier.weight" in tensors and "bert.pooler.dense.weight" in tensors
    weights = load_file(os_out / "model.safetensors")
    zeros = sum(int((weights[k] == 0).sum()) for k in tensors)
    assert zeros == info["num_zeros"]  # counted in the file as reported

    # gradual with KD, layers dropped, QAT, embeddings and head held: every zero stays 0
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\nbatch_size: 8\nmax_seq_length: 48\n"
                      "lr: {schedule: cyclic_linear, max: 1e-3, min: 1e-4}\n"
                      "pruning: {method: obert, init_sparsity: 0.5, final_sparsity: 0.7, "
                      "start_epoch: 0.5, end_epoch: 1.5, update_frequency: 0.5, "
                      "fisher: {num_grads: 8, grad_batch_size: 4, block_size: 16}}\n"
                      "distillation: {hardness: 1.0, temperature: 5.5}\n"
                      "targets: {embeddings: true, head: true}\n"
                      "layers: {keep: [1]}\nquantization: {epochs: 1, lr: {max: 1e-3}}\n")
    pr = tmp_path / "pr"
    assert main(["prune", "--recipe", str(recipe), "--model", str(ft), *data,
                 "--logging-steps", "100", "--output", str(pr)]) == 0
    info = json.loads((pr / "sparsity.json").read_text())
    assert info["settings"]["teacher"] == str(ft)  # the fine-tuned start model teaches
    assert 0.7 - 1e-4 <= info["global_sparsity"] <= 0.72  # + the weights INT8 rounds to 0
    assert info["tensors"]["bert.embeddings.word_embeddings.weight"]["sparsity"] > 0
    model = AutoModelForMultipleChoice.from_pretrained(pr)
    assert model.config.num_hidden_layers == 1
    word = model.bert.embeddings.word_embeddings.weight
    e = info["tensors"]["bert.embeddings.word_embeddings.weight"]
    assert int((word == 0).sum()) == e["zeros"]  # held through QAT and reload

    # the compiled models score what PyTorch does; INT8 within the kernels' rounding
    capsys.readouterr()
    scores = {}
    dev_only = ["--task", "commonsense_qa", "--validation-file", str(dev), "--max-seq-length", "48",
                "--quiet"]  # evaluate reads the dev split only: --train-file would be refused
    for runtime in ("pytorch", "fp32", "int8"):
        assert main(["evaluate", "--model", str(pr), *dev_only, "--runtime", runtime,
                     "--json"]) == 0
        scores[runtime] = json.loads(capsys.readouterr().out)
    assert scores["fp32"]["accuracy"] == scores["pytorch"]["accuracy"]
    assert scores["int8"]["kernels"]["trained_scales"]
    qat = json.loads((pr / "eval_results.json").read_text())  # scored fake-quantized
    assert abs(scores["int8"]["accuracy"] - qat["accuracy"]) <= 2 / 48  # a tie or two
    ref = AutoModelForMultipleChoice.from_pretrained(pr).eval()
    from obert.compression.plan import prepare_qat

    prepare_qat(ref)  # QAT's model: what the INT8 kernels compute
    compiled = rt.compile(AutoModelForMultipleChoice.from_pretrained(pr), "int8")
    from obert.data.source import DataArgs
    from obert.models import load_tokenizer
    from obert.workflows.export import check_rows

    inputs = check_rows(load_tokenizer(str(pr)), DataArgs("commonsense_qa",
                                                          validation_file=str(dev)), 16, 48,
                        True)
    with torch.no_grad():
        a, b = ref(**inputs).logits, compiled(**inputs).logits
    assert a.shape == (16, 5)
    assert (a - b).abs().max() <= 1e-2 * max(1.0, a.abs().max().item())

    # export: dynamic batch, choices and tokens, checked with ONNX Runtime on dev rows
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "mc.onnx"
    assert main(["export", "--model", str(pr), "--output", str(onnx_path), "--int8", "--task",
                 "commonsense_qa", "--validation-file", str(dev), "--max-seq-length", "48",
                 "--json", "--quiet"]) == 0
    exp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exp["rows"] == 32 and exp["max_abs_diff"] <= 1e-2 * max(1, exp["max_logit"])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", "choices", "sequence"]
    feeds = {k: v[:3, :2].numpy() for k, v in inputs.items()}  # another batch and choice count
    assert sess.run(["logits"], feeds)[0].shape == (3, 2)

    # bench: [batch, choices, tokens] inputs, and the same engines scored on the task
    assert main(["bench", "--model", str(pr), "--task", "commonsense_qa", "--validation-file",
                 str(dev), "--engines", "dense-fp32,sparse-int8", "--warmup", "0",
                 "--repeats", "1", "--seq-len", "32", "--batch-size", "2", "--json",
                 "--quiet"]) == 0
    bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bench["choices"] == 5
    acc = {r["name"]: r["metrics"]["accuracy"] for r in bench["results"]}
    assert acc["sparse-int8"] == scores["int8"]["accuracy"]

    # drop-layers keeps the multiple-choice head
    dl = tmp_path / "dl"
    assert main(["drop-layers", "--model", str(ft), "--keep", "0", "--output", str(dl),
                 "--quiet"]) == 0
    assert type(AutoModelForMultipleChoice.from_pretrained(dl)).__name__ == \
        "BertForMultipleChoice"

    # sparse transfer from the embeddings-pruned model holds the embeddings' zeros too
    st = tmp_path / "st"
    assert main(["finetune", "--model", str(os_out), *data, "--epochs", "1", "--lr", "1e-3",
                 "--batch-size", "8", "--keep-sparsity", "--output", str(st)]) == 0
    after = load_file(st / "model.safetensors")
    for k in ("bert.embeddings.word_embeddings.weight", "classifier.weight"):
        assert (weights[k] == 0).sum() > 0
        assert ((weights[k] == 0) & (after[k] != 0)).sum() == 0  # no pruned weight revived


@pytest.mark.slow
def test_winogrande_and_a_generic_csv_train_and_score(tmp_path, tiny_mc_dir, shared_data, capsys):
    wg = shared_data / "winogrande"
    train = tmp_path / "wg-train.jsonl"
    train.write_text("".join(x + "\n" for x in (wg / "train_l.jsonl").read_text()
                             .splitlines()[:32]))
    out = tmp_path / "wg"
    assert main(["finetune", "--model", str(tiny_mc_dir), "--task", "winogrande", "--train-file",
                 str(train), "--validation-file", str(wg / "dev.parquet"), "--epochs", "1",
                 "--output", str(out), "--quiet"]) == 0
    res = json.loads((out / "eval_results.json").read_text())
    assert res["n"] == 1267 and 0.3 <= res["accuracy"] <= 0.7  # a random model: near chance
    csv = tmp_path / "mc.csv"
    csv.write_text("question,choice0,choice1,choice2,label\n" + "".join(
        f"Which is number {i}?,{i},{i + 1},{i + 2},0\n" for i in range(16)))
    out = tmp_path / "gen"
    assert main(["finetune", "--model", str(tiny_mc_dir), "--task", "multiple_choice",
                 "--train-file", str(csv), "--validation-file", str(csv), "--epochs", "1",
                 "--output", str(out), "--quiet"]) == 0
    assert json.loads((out / "eval_results.json").read_text())["n"] == 16
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--task", "multiple_choice",
                 "--validation-file", str(csv), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "multiple_choice"
