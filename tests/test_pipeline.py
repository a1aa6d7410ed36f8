"""``obert.pipeline``: transformers pipelines on the compiled model give transformers' answers.

Each task runs on a tiny 2-layer BERT (hidden 32, MiniLM's tokenizer) whose encoder Linears are
pruned 90% in 4-blocks, so the compiled models run the sparse kernels, on real rows (SST-2 dev
sentences, SQuAD dev questions). Text classification and fill-mask are compared with
``transformers.pipeline`` on the PyTorch model; transformers 5 has no question-answering or
multiple-choice pipeline, so those are compared with obert's own path on the PyTorch model
(``obert.data.qa``'s windows and span search as ``obert evaluate`` runs them; ``encode_choices``).

Tolerances: fp32 runs the same math in another summation order: 1e-5 on probabilities (1e-4
relative for QA span and fill-mask scores, which are small numbers: ~2e-4 and ~5e-5 on these
random models). INT8 rounds every activation to 8 bits. These random tiny models answer nearly
the same for every input, so INT8 moves their probabilities very little (measured on 256 SST-2
rows: 4e-7 absolute; QA span scores 5e-5 relative on 59 SQuAD questions, every span the same;
fill-mask 5e-6 relative): the bounds below (1e-4 absolute, 1e-2 relative) check the wiring, not
INT8's accuracy. That is measured on a real fine-tuned model in the slow test
``test_int8_labels_on_finetuned_minilm`` (MiniLM-L6 on SST-2, all 872 dev rows: INT8 moves a
probability by at most 0.087, p99 0.048, and flips 4 labels, each with a margin under 0.07,
i.e. within INT8's own noise; its bounds: 0.15, at most 2% flips, each within 2x the largest
difference).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import tiny_bert
from torch import nn

import obert
from obert.deploy.predictor import InputError, Predictor
from obert.errors import ObertError

FP32_TOL, FP32_REL = 1e-5, 1e-4
INT8_TOL, INT8_REL = 1e-4, 1e-2  # absolute on probabilities; relative on QA/fill-mask scores


def prune_block4(model: nn.Module, sparsity: float = 0.9) -> nn.Module:
    """Zero the smallest 4-blocks (along the input) of each encoder Linear."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and ".layer." in name:
                n, k = mod.weight.shape
                blocks = mod.weight.view(n, k // 4, 4)
                score = blocks.abs().sum(-1).flatten()
                drop = score.topk(int(round(sparsity * score.numel())), largest=False).indices
                keep = torch.ones_like(score)
                keep[drop] = 0
                mod.weight.mul_(keep.view(n, -1, 1).expand_as(blocks).reshape(n, k))
    return model


def pruned_model(cls_name: str, out: Path, minilm_path: Path, **config) -> Path:
    """A tiny random model of ``cls_name`` (conftest's), pruned 90% in 4-blocks, saved to
    ``out`` with MiniLM's tokenizer; ``config`` overrides (labels, problem type)."""
    src = tiny_bert(cls_name, out.with_name(out.name + "-src"), minilm_path)
    model = getattr(transformers, cls_name).from_pretrained(src, ignore_mismatched_sizes=True,
                                                            **config)
    prune_block4(model).save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, minilm_path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("deploy")
    labels = {"id2label": {0: "negative", 1: "positive"},
              "label2id": {"negative": 0, "positive": 1}}
    return {
        "classification": pruned_model("BertForSequenceClassification", root / "cls",
                                       minilm_path, **labels),
        "regression": pruned_model("BertForSequenceClassification", root / "reg", minilm_path,
                                   num_labels=1, problem_type="regression"),
        "qa": pruned_model("BertForQuestionAnswering", root / "qa", minilm_path),
        "multiple_choice": pruned_model("BertForMultipleChoice", root / "mc", minilm_path),
        "mlm": pruned_model("BertForMaskedLM", root / "mlm", minilm_path),
    }


@pytest.fixture(scope="session")
def sst2_rows(glue_dir) -> list[str]:
    with open(glue_dir / "SST-2" / "dev.tsv", encoding="utf-8") as f:
        return [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


@pytest.fixture(scope="session")
def squad_rows(shared_data) -> list[dict]:
    path = shared_data / "squad" / "dev-v1.1.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    data = json.loads(path.read_text())["data"]
    return [{"question": qa["question"], "context": p["context"]}
            for a in data[:2] for p in a["paragraphs"][:3] for qa in p["qas"][:2]]


def reference(task: str, folder: Path, **kwargs):
    """transformers' own pipeline on the PyTorch model."""
    model = {"text-classification": transformers.AutoModelForSequenceClassification,
             "fill-mask": transformers.AutoModelForMaskedLM}[task]
    return transformers.pipeline(task, model=model.from_pretrained(folder),
                                 tokenizer=transformers.AutoTokenizer.from_pretrained(folder),
                                 device="cpu", **kwargs)


def by_label(answer: list[dict]) -> dict[str, float]:
    return {a["label"]: a["score"] for a in answer}


@pytest.mark.parametrize("runtime", ["pytorch", "fp32", "int8"])
def test_text_classification_matches_transformers(tiny_models, sst2_rows, runtime):
    folder = tiny_models["classification"]
    pipe = obert.pipeline("text-classification", folder, runtime=runtime, top_k=None)
    assert isinstance(pipe, transformers.TextClassificationPipeline)
    if runtime != "pytorch":  # the compiled model, on the sparse kernels
        assert pipe.predictor.engine["sparse"] > 0 and hasattr(pipe.model, "obert_layers")
    ref = reference("text-classification", folder, top_k=None)
    inputs = sst2_rows[:48] + [{"text": a, "text_pair": b}
                               for a, b in zip(sst2_rows[48:56], sst2_rows[56:64], strict=True)]
    got, want = pipe(inputs, batch_size=8), ref(inputs, batch_size=8)
    tol = FP32_TOL if runtime != "int8" else INT8_TOL
    for g, w in zip(got, want, strict=True):
        g, w = by_label(g), by_label(w)
        assert set(g) == set(w) == {"negative", "positive"}  # the model's own id2label
        assert max(abs(g[k] - w[k]) for k in w) <= tol
    # one text, default arguments: transformers' answer and shape (the predictor reused)
    one, ref_one = obert.pipeline(None, pipe.predictor)(sst2_rows[0]), reference(
        "text-classification", folder)(sst2_rows[0])
    assert one[0]["label"] == ref_one[0]["label"] and set(one[0]) == {"label", "score"}
    assert one[0]["score"] == pytest.approx(ref_one[0]["score"], abs=tol)


def test_regression_returns_the_value(tiny_models, sst2_rows):
    folder = tiny_models["regression"]
    ref = reference("text-classification", folder)
    for runtime in ("fp32", "int8"):
        pipe = obert.pipeline(None, folder, runtime=runtime)
        assert pipe.predictor.kind == "regression"
        pairs = [{"text": a, "text_pair": b} for a, b in zip(sst2_rows[:8], sst2_rows[8:16],
                                                            strict=True)]
        tol = FP32_TOL if runtime == "fp32" else INT8_TOL
        for g, w in zip(pipe(pairs), ref(pairs), strict=True):
            assert abs(g["score"] - w["score"]) <= tol
        value = pipe.predictor(pairs[:1])[0]["value"]  # the server's form
        assert abs(value - ref(pairs[:1])[0]["score"]) <= tol


@pytest.mark.parametrize("runtime", ["fp32", "int8"])
def test_fill_mask_matches_transformers(tiny_models, sst2_rows, runtime):
    folder = tiny_models["mlm"]
    pipe = obert.pipeline("fill-mask", folder, runtime=runtime)
    assert isinstance(pipe, transformers.FillMaskPipeline)
    ref = reference("fill-mask", folder)
    texts = [" ".join(s.split()[:3] + ["[MASK]"] + s.split()[4:]) for s in sst2_rows[:6]]
    rel = FP32_REL if runtime == "fp32" else INT8_REL
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    tok = pipe.tokenizer
    for text, got, want in zip(texts, pipe(texts), ref(texts), strict=True):
        if runtime == "fp32":
            assert [g["token"] for g in got] == [w["token"] for w in want]
            assert [g["sequence"] for g in got] == [w["sequence"] for w in want]
        # every candidate's score is the reference probability of that token, and the first
        # is (within tolerance) the reference's best
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0, enc["input_ids"][0] == tok.mask_token_id][0]
        p = logits.softmax(-1)
        tol = rel * p.max().item()
        for g in got:
            assert abs(g["score"] - p[g["token"]].item()) <= tol
        assert p[got[0]["token"]].item() >= p.max().item() - 2 * tol
        assert got[0]["score"] == pytest.approx(want[0]["score"], rel=rel)


def qa_reference(folder: Path, rows: list[dict], max_length: int, stride: int) -> list[str]:
    """Answers as ``obert evaluate`` finds them on the PyTorch model: windows, logits, the
    n-best span search of ``obert.data.qa``."""
    from obert.data.qa import postprocess, prepare_eval_features

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    examples = {"id": [str(i) for i in range(len(rows))],
                "question": [r["question"] for r in rows], "context": [r["context"] for r in rows]}
    feats = prepare_eval_features(examples, tok, max_length, stride)
    batch = tok.pad({k: feats[k] for k in ("input_ids", "token_type_ids", "attention_mask")},
                    return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    answers = postprocess([{"id": str(i), "context": r["context"]} for i, r in enumerate(rows)],
                          {"example_id": feats["example_id"],
                           "offset_mapping": feats["offset_mapping"]},
                          out.start_logits.numpy(), out.end_logits.numpy())
    return [answers[str(i)] for i in range(len(rows))]


def test_question_answering_matches_pytorch(tiny_models, squad_rows):
    folder = tiny_models["qa"]
    pipes = {rt: obert.pipeline("question-answering", folder, runtime=rt)
             for rt in ("pytorch", "fp32", "int8")}
    pred = pipes["pytorch"].predictor
    assert pred.max_length == 128 and pred.doc_stride > 0  # the tiny model's 128 positions
    want = qa_reference(folder, squad_rows, pred.max_length, pred.doc_stride)
    got = {rt: p(squad_rows) for rt, p in pipes.items()}
    for row, w, a, b, c in zip(squad_rows, want, got["pytorch"], got["fp32"], got["int8"],
                               strict=True):
        assert a["answer"] == w == b["answer"]  # the evaluate path's span, exactly
        assert row["context"][a["start"]:a["end"]] == a["answer"]
        assert b["score"] == pytest.approx(a["score"], rel=FP32_REL)
        if c["answer"] == a["answer"]:
            assert c["score"] == pytest.approx(a["score"], rel=INT8_REL)
    agree = np.mean([a["answer"] == c["answer"] for a, c in zip(got["pytorch"], got["int8"],
                                                                strict=True)])
    assert agree >= 0.9, f"INT8 picks another span for {1 - agree:.0%} of the questions"
    # the pipeline's call forms: keywords, one object, and a batch equal one by one
    one = pipes["fp32"](question=squad_rows[0]["question"], context=squad_rows[0]["context"])
    assert one == got["fp32"][0] == pipes["fp32"](squad_rows[0])
    assert pipes["fp32"](squad_rows[:4], batch_size=4) == got["fp32"][:4]


def test_multiple_choice_matches_pytorch(tiny_models, sst2_rows):
    import datasets

    from obert.data.mc import ChoiceCollator, encode_choices

    folder = tiny_models["multiple_choice"]
    rows = [{"question": sst2_rows[i], "choices": sst2_rows[i + 1:i + 4]} for i in range(0, 40, 4)]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ds = datasets.Dataset.from_dict({"stem": [r["question"] for r in rows],
                                     "choices": [r["choices"] for r in rows],
                                     "label": [0] * len(rows), "line": list(range(len(rows)))})
    enc = encode_choices(ds, tok, 128)
    batch = ChoiceCollator(tok)([{k: v for k, v in r.items() if k != "labels"} for r in enc])
    model = transformers.AutoModelForMultipleChoice.from_pretrained(folder).eval()
    with torch.no_grad():
        want = model(**batch).logits.softmax(-1).numpy()
    for runtime in ("fp32", "int8"):
        pipe = obert.pipeline("multiple-choice", folder, runtime=runtime)
        got = pipe(rows, batch_size=8)
        tol = FP32_TOL if runtime == "fp32" else INT8_TOL
        for g, w, r in zip(got, want, rows, strict=True):
            assert np.abs(np.array(g["scores"]) - w).max() <= tol
            assert g["answer"] == r["choices"][g["choice"]]
        one = pipe(question=rows[0]["question"], choices=rows[0]["choices"])
        assert one["choice"] == got[0]["choice"]
        assert one["scores"] == pytest.approx(got[0]["scores"], abs=1e-6)  # batch of 1 vs 8


def test_long_inputs_cut_or_refused(tiny_models):
    folder = tiny_models["classification"]
    long_text = "a remarkably long review " * 200
    pipe = obert.pipeline("text-classification", folder, runtime="fp32")
    assert pipe(long_text)[0]["label"] in ("negative", "positive")
    strict = obert.pipeline("text-classification", folder, runtime="fp32", truncate=False)
    with pytest.raises(InputError, match="at most 128"):
        strict(long_text)
    with pytest.raises(InputError, match="no \\[MASK\\]"):
        Predictor.load(str(tiny_models["mlm"]), "fp32")(["no mask here"])


def test_pipeline_refuses_bad_requests(tiny_models, minilm_path):
    folder = tiny_models["classification"]
    with pytest.raises(ObertError, match="not a question-answering model"):
        obert.pipeline("question-answering", folder, runtime="fp32")
    with pytest.raises(ObertError, match="runtime 'bogus'"):
        obert.pipeline("text-classification", folder, runtime="bogus")
    with pytest.raises(ObertError, match="does not exist"):
        obert.pipeline("text-classification", "/no/such/model")
    with pytest.raises(ObertError, match="unknown task"):
        obert.pipeline("sentimentt", folder)
    with pytest.raises(ObertError, match="cannot tell what"):  # a bare encoder: no head
        obert.pipeline(None, str(minilm_path), runtime="fp32")
    with pytest.raises(ObertError, match="no trained sst2 head"):
        obert.pipeline("sst2", str(minilm_path), runtime="fp32")
    pipe = obert.pipeline(None, tiny_models["qa"], runtime="fp32")
    with pytest.raises(InputError, match="question, context"):
        pipe({"question": "who?"})


@pytest.mark.slow
def test_import_obert_stays_cheap():
    import subprocess
    import sys

    code = ("import sys, obert; assert 'transformers' not in sys.modules and 'torch' not in "
            "sys.modules; assert callable(obert.pipeline); assert 'transformers' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_int8_labels_on_finetuned_minilm(minilm_sst2, sst2_rows):
    """On a real fine-tuned model (MiniLM-L6 on SST-2, dense layers in INT8, INT8 attention),
    INT8 keeps the labels of the PyTorch model on SST-2 dev, except at near-ties."""
    rows = sst2_rows[:256]
    ref = reference("text-classification", minilm_sst2, top_k=None)(rows, batch_size=32)
    got = obert.pipeline("text-classification", minilm_sst2, runtime="int8",
                         top_k=None)(rows, batch_size=32)
    diffs, flips = [], []
    for g, w in zip(got, ref, strict=True):
        g, w = by_label(g), by_label(w)
        diffs.append(max(abs(g[k] - w[k]) for k in w))
        if max(g, key=g.get) != max(w, key=w.get):
            flips.append(abs(w["positive"] - w["negative"]))
    assert max(diffs) <= 0.15
    assert len(flips) <= 0.02 * len(rows)
    assert all(m <= 2 * max(diffs) for m in flips)  # only rows within INT8's noise flip
