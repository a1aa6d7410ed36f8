"""Model cards (``obert.card``): the README.md of every output folder parses back with
``huggingface_hub.ModelCard``; each command's folder gets one, with its dev metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from obert.card import display_name, model_card, read_lineage, write_card
from obert.cli import main
from obert.training.recipe import load_recipe

BERT_CONFIG = {"model_type": "bert", "architectures": ["BertForSequenceClassification"],
               "num_hidden_layers": 12, "finetuning_task": "sst2"}


def tensors(sparsity: float, layers: int = 2, head: bool = False) -> dict:
    """A sparsity.json ``tensors`` block: query and output.dense of each layer."""
    out = {}
    for i in range(layers):
        for part, shape in (("attention.self.query", [64, 64]), ("output.dense", [64, 256])):
            n = shape[0] * shape[1]
            out[f"bert.encoder.layer.{i}.{part}.weight"] = {
                "shape": shape, "sparsity": sparsity, "zeros": int(n * sparsity)}
    if head:
        out["classifier.weight"] = {"shape": [2, 64], "sparsity": 0.5, "zeros": 64}
    return out


def report(sparsity: float, **kw) -> dict:
    t = tensors(sparsity, **kw)
    n = sum(v["shape"][0] * v["shape"][1] for v in t.values())
    z = sum(v["zeros"] for v in t.values())
    return {"global_sparsity": z / n, "num_weights": n, "num_zeros": z, "tensors": t}


def glue_data(task: str = "sst2", **kw) -> dict:
    return {"task": task, "data_dir": "/data/glue", "train_file": None, "validation_file": None,
            "max_train_samples": None, "seed": 42, **kw}


def parse(text: str) -> ModelCard:
    card = ModelCard(text)
    assert text.startswith("---\n") and card.text.lstrip().startswith("# ")
    return card


def metric(card: ModelCard, name: str) -> float:
    found = [r for r in card.data.eval_results if r.metric_type == name]
    assert len(found) == 1, [r.metric_type for r in card.data.eval_results]
    return found[0].metric_value


# -- the builder on hand-made sparsity.json files -----------------------------------------------

def test_gradual_obert_with_qat() -> None:
    recipe = load_recipe("obert-glue-L6-block4-80-qat").to_dict()
    info = {**report(0.8), "method": "gradual-obert",
            "settings": {"recipe": recipe, "teacher": "textattack/bert-base-uncased-SST-2",
                         "steps_per_epoch": 100, "total_steps": 3200,
                         "prune_at": {"200": 0.3, "2600": 0.8}},
            "pruning_steps": [{"step": 200, "target": 0.3, "sparsity": 0.3},
                              {"step": 2600, "target": 0.8, "sparsity": 0.8}],
            "quantization": {"scheme": "int8: weights symmetric per output row",
                             "file": "quantization.safetensors", "layers": ["a", "b"],
                             "qat_start_step": 3000, "epochs": 2},
            "train": {"train_loss": 0.12, "steps": 3200, "wall_s": 3600.0},
            "obert_version": "0.1.0", "source_model": "bert-base-uncased",
            "data": glue_data()}
    metrics = {"task": "sst2", "split": "dev", "accuracy": 0.9106, "n": 872}
    text = model_card(info, metrics, {**BERT_CONFIG, "num_hidden_layers": 6}, name="sst2-80q")
    card = parse(text)
    assert card.data.base_model == "bert-base-uncased"
    assert card.data.library_name == "transformers"
    assert {"obert", "pruned", "sparse", "int8", "block-sparse", "layer-dropping",
            "knowledge-distillation", "text-classification"} <= set(card.data.tags)
    assert card.data.datasets == ["nyu-mll/glue"]
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.model_name == "sst2-80q"
    assert metric(card, "accuracy") == pytest.approx(0.9106)
    result = card.data.eval_results[0]
    assert (result.dataset_type, result.dataset_config, result.dataset_split) == (
        "nyu-mll/glue", "sst2", "validation")
    assert card.data.license is None  # not known: not written
    body = card.text
    assert "gradual oBERT" in body and "80.0%" in body and "4-block" in body
    assert "[0, 2, 4, 6, 8, 11]" in body  # the recipe's layers.keep
    assert "INT8 QAT" in body and "quantization.safetensors" in body
    assert "textattack/bert-base-uncased-SST-2" in body
    assert "```yaml\nepochs: 30" in body and "<details>" in body  # the recipe, collapsible
    assert "obert serve --model sst2-80q --runtime int8" in body
    assert 'obert.pipeline("text-classification", "sst2-80q", runtime="int8")' in body
    assert "obert evaluate --model sst2-80q --task sst2 --data-dir /data/glue --runtime int8" \
        in body


def test_oneshot_squad() -> None:
    info = {**report(0.5, head=True), "method": "obert",
            "settings": {"method": "obert", "mask": "unstructured", "scope": "global",
                         "recomputations": 1,
                         "fisher": {"num_grads": 1024, "block_size": None, "damp": 1e-7,
                                    "grad_batch_size": 8, "max_memory_gb": None},
                         "sparsity": 0.5, "fisher_block_size": 50, "max_seq_length": 384,
                         "world_size": 1},
            "wall_s": 120.0, "obert_version": "0.1.0",
            "source_model": "csarron/bert-base-uncased-squad-v1",
            "data": {"task": "squad", "data_dir": None, "train_file": None,
                     "validation_file": None, "max_train_samples": None, "seed": 42,
                     "doc_stride": 128, "split_articles": None}}
    metrics = {"task": "squad", "split": "dev", "exact_match": 80.1, "f1": 87.7, "n": 10570,
               "windows": 10784}
    config = {"model_type": "bert", "architectures": ["BertForQuestionAnswering"],
              "num_hidden_layers": 12}
    card = parse(model_card(info, metrics, config, name="squad-50"))
    assert card.data.base_model == "csarron/bert-base-uncased-squad-v1"
    assert {"pruned", "sparse", "question-answering"} <= set(card.data.tags)
    assert "int8" not in card.data.tags and "block-sparse" not in card.data.tags
    assert card.data.datasets == ["rajpurkar/squad"]
    assert card.data.metrics == ["exact_match", "f1"]
    assert metric(card, "exact_match") == pytest.approx(80.1)
    assert metric(card, "f1") == pytest.approx(87.7)
    body = card.text
    assert "one-shot oBERT" in body and "50.0%" in body and "unstructured" in body
    assert "the pooler/classifier" in body  # the head was pruned too
    assert "| head | 1 |" in body  # the per-layer table
    assert "--runtime fp32" in body and "AutoModelForQuestionAnswering" in body
    assert 'print(pipe({"question": "Who wrote the letter?"' in body  # the pipeline's input


def test_drop_layers_without_metrics() -> None:
    info = {**report(0.0), "method": "drop-layers",
            "layers": {"kept": [0, 6, 11], "from": 12, "rule": "the paper's (PAPER.md §5)"},
            "obert_version": "0.1.0", "source_model": "textattack/bert-base-uncased-MRPC"}
    config = {**BERT_CONFIG, "num_hidden_layers": 3, "finetuning_task": "mrpc"}
    card = parse(model_card(info, None, config, name="mrpc-L3"))
    assert card.data.base_model == "textattack/bert-base-uncased-MRPC"
    tags = set(card.data.tags)
    assert {"obert", "layer-dropping", "text-classification"} <= tags
    assert not {"pruned", "sparse"} & tags  # a dense model with fewer layers
    assert card.data.eval_results is None and card.data.datasets == ["nyu-mll/glue"]
    body = card.text
    assert "drop-layers" in body and "[0, 6, 11] of 12" in body and "0.0%" in body
    assert "No dev metrics" in body and "obert evaluate --model mrpc-L3 --task mrpc" in body
    assert '"text_pair": ' in body  # MRPC takes sentence pairs


def test_dense_finetune_multiple_choice() -> None:
    info = {**report(0.0), "method": "dense-finetune",
            "settings": {"epochs": 3.0, "lr": 5e-5, "batch_size": 32, "max_seq_length": 64,
                         "warmup_ratio": 0.1, "weight_decay": 0.0, "seed": 42,
                         "keep_sparsity": False, "head_only": False},
            "train": {"train_loss": 1.2, "steps": 300, "wall_s": 50.0},
            "obert_version": "0.1.0", "source_model": "bert-base-uncased",
            "data": glue_data("commonsense_qa", data_dir=None)}
    metrics = {"task": "commonsense_qa", "split": "dev", "accuracy": 0.55, "n": 1221}
    config = {"model_type": "bert", "architectures": ["BertForMultipleChoice"]}
    card = parse(model_card(info, metrics, config, name="csqa"))
    tags = set(card.data.tags)
    assert {"obert", "multiple-choice"} <= tags and not {"pruned", "sparse", "int8"} & tags
    assert card.data.datasets == ["tau/commonsense_qa"]
    assert card.data.pipeline_tag is None  # the hub has no multiple-choice pipeline
    assert metric(card, "accuracy") == pytest.approx(0.55)
    assert card.data.eval_results[0].task_type == "multiple-choice"
    assert "dense fine-tune" in card.text and "0.0%" in card.text
    assert "```yaml\nepochs: 3.0" in card.text  # the settings
    assert '"choices": ["fridge"' in card.text


def test_mlm_upstream_gmp_from_local_files() -> None:
    recipe = load_recipe("gmp-mlm-90").to_dict()
    info = {**report(0.9, head=False), "method": "gradual-magnitude",
            "settings": {"recipe": recipe, "teacher": "bert-base-uncased"},
            "pruning_steps": [{"step": 0, "target": 0.7, "sparsity": 0.7},
                              {"step": 50, "target": 0.9, "sparsity": 0.9}],
            "train": {"train_loss": 2.5, "steps": 100, "wall_s": 99.0},
            "obert_version": "0.1.0", "source_model": "bert-base-uncased",
            "data": {"task": "mlm", "data_dir": None, "train_file": "wiki-train.txt",
                     "validation_file": "wiki-dev.txt", "max_train_samples": 1000, "seed": 42,
                     "dataset": None, "dataset_config": None, "streaming": False}}
    metrics = {"task": "mlm", "split": "dev", "accuracy": 0.61, "perplexity": 7.5,
               "loss": 2.01, "n": 50, "masked_tokens": 1000}
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"],
              "num_hidden_layers": 12}
    card = parse(model_card(info, metrics, config, name="bert-mlm-90"))
    assert card.data.base_model == "bert-base-uncased"
    assert {"pruned", "sparse", "fill-mask", "knowledge-distillation"} <= set(card.data.tags)
    assert card.data.datasets == ["wiki-train.txt", "wiki-dev.txt"]  # local files as given
    assert card.data.pipeline_tag == "fill-mask"
    assert metric(card, "perplexity") == pytest.approx(7.5)
    assert metric(card, "accuracy") == pytest.approx(0.61)
    assert "GMP★" in card.text and "90.0%" in card.text
    assert "--validation-file wiki-dev.txt" in card.text


@pytest.mark.parametrize(("task", "dataset", "split"), [
    ("mnli", "nyu-mll/glue", "validation_matched"), ("winogrande", "allenai/winogrande",
                                                     "validation")])
def test_dataset_ids(task: str, dataset: str, split: str) -> None:
    info = {**report(0.0), "method": "dense-finetune", "source_model": "bert-base-uncased",
            "data": glue_data(task, data_dir=None)}
    card = parse(model_card(info, {"task": task, "split": "dev", "accuracy": 0.5}, None))
    assert card.data.datasets == [dataset]
    assert card.data.eval_results[0].dataset_split == split


def test_local_start_model_lineage(tmp_path: Path) -> None:
    """A local start model: base_model is the nearest hub model above it (its sparsity.json
    chain), and a license its card states is carried over."""
    up = tmp_path / "ft"
    up.mkdir()
    (up / "sparsity.json").write_text(json.dumps({"method": "dense-finetune",
                                                  "source_model": "bert-base-uncased"}))
    (up / "README.md").write_text("---\nlicense: apache-2.0\n---\n# ft\n")
    chain = read_lineage(str(up))
    assert [e["model"] for e in chain] == [str(up), "bert-base-uncased"]
    info = {**report(0.5), "method": "magnitude", "source_model": str(up),
            "data": glue_data()}
    card = parse(model_card(info, None, None, name="x", lineage=chain))
    assert card.data.base_model == "bert-base-uncased" and card.data.license == "apache-2.0"
    # a local model obert did not make, with no card: no base model to name
    bare = tmp_path / "bare"
    bare.mkdir()
    card = parse(model_card({**info, "source_model": str(bare)}, None, None,
                            lineage=read_lineage(str(bare))))
    assert card.data.base_model is None


def test_display_name_and_write_card(tmp_path: Path) -> None:
    tmp = tmp_path / ".pruned.tmp-123-abcd"
    assert display_name(tmp) == "pruned"
    assert display_name(tmp / "sparsity-0.50") == "pruned/sparsity-0.50"
    assert display_name(tmp_path / "plain") == "plain"
    tmp.mkdir()
    write_card(tmp, {"method": "magnitude", "global_sparsity": 0.5}, None, None)
    assert "# pruned" in (tmp / "README.md").read_text()


def test_a_card_that_fails_costs_a_warning_not_the_model(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    write_card(tmp_path, {"method": "magnitude", "global_sparsity": "half"}, None, None)
    assert not (tmp_path / "README.md").exists()
    assert "warning: no model card written" in capsys.readouterr().err


# -- every command's output folder ------------------------------------------------------------

def check_folder(folder: Path, name: str | None = None) -> ModelCard:
    """The folder's README.md parses, and its model-index holds eval_results.json's metrics."""
    card = parse((folder / "README.md").read_text())
    assert "obert" in card.data.tags
    if name:
        assert card.data.model_name in (None, name) and f"# {name}\n" in card.text
    evals = folder / "eval_results.json"
    if evals.is_file():
        metrics = json.loads(evals.read_text())
        assert metric(card, "accuracy") == metrics["accuracy"]
    else:
        assert card.data.eval_results is None
    return card


def test_finetune_folder_has_card(tiny_finetuned_dir: Path) -> None:
    card = check_folder(tiny_finetuned_dir, tiny_finetuned_dir.name)
    assert card.data.eval_results  # the fixture's finetune scored dev
    assert "text-classification" in card.data.tags and "pruned" not in card.data.tags
    assert "dense fine-tune" in card.text


def test_oneshot_folders_have_cards(tiny_finetuned_dir: Path, glue_dir: Path,
                                    tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    assert main(["oneshot", "--model", str(tiny_finetuned_dir), "--task", "sst2",
                 "--data-dir", str(glue_dir), "--sparsity", "0.5", "--method", "magnitude",
                 "--evaluate", "--output", str(out), "--quiet"]) == 0
    card = check_folder(out, "pruned")
    assert {"pruned", "sparse"} <= set(card.data.tags)
    assert "one-shot magnitude" in card.text and "50.0%" in card.text
    assert "obert serve --model pruned --runtime fp32" in card.text
    assert card.data.datasets == ["nyu-mll/glue"]

    several = tmp_path / "several"  # one sub-folder per sparsity, each with its card
    assert main(["oneshot", "--model", str(tiny_finetuned_dir), "--task", "sst2",
                 "--data-dir", str(glue_dir), "--sparsity", "0.3", "0.6", "--method",
                 "magnitude", "--output", str(several), "--quiet"]) == 0
    for s in ("0.30", "0.60"):
        card = check_folder(several / f"sparsity-{s}", f"several/sparsity-{s}")
        assert f"{float(s):.1%}" in card.text


def test_drop_layers_folder_has_card(tiny_finetuned_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "one-layer"
    assert main(["drop-layers", "--model", str(tiny_finetuned_dir), "--keep", "1",
                 "--output", str(out), "--quiet"]) == 0
    card = check_folder(out, "one-layer")
    assert "layer-dropping" in card.data.tags and "text-classification" in card.data.tags
    assert "[1] of 2" in card.text
