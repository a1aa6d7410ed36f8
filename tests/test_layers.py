"""Layer dropping: the kept layers bit for bit, a folder plain transformers loads, the paper's
default choices, and a recipe that drops layers and distills from the full-depth teacher."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from obert.cli import main
from obert.compression.layers import default_keep, drop_layers, layer_stack

SMALL = dict(vocab_size=100, max_position_embeddings=40)


@pytest.mark.parametrize("make", [
    lambda: BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=4,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     **SMALL)),
    lambda: RobertaForSequenceClassification(RobertaConfig(hidden_size=16, num_hidden_layers=4,
                                                           num_attention_heads=2,
                                                           intermediate_size=32, **SMALL)),
    lambda: DistilBertForSequenceClassification(DistilBertConfig(dim=16, hidden_dim=32,
                                                                 n_layers=4, n_heads=2, **SMALL)),
], ids=["bert", "roberta", "distilbert"])
def test_kept_layers_bit_for_bit_and_plain_reload(make, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    name, stack = layer_stack(model)
    before = {k: v.clone() for k, v in stack.state_dict().items()}
    drop_layers(model, [0, 3])
    assert model.config.num_hidden_layers == 2
    after = layer_stack(model)[1].state_dict()
    for k, v in after.items():
        i, rest = k.split(".", 1)
        assert torch.equal(v, before[f"{[0, 3][int(i)]}.{rest}"]), k
    model.save_pretrained(tmp_path, safe_serialization=True)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert len(layer_stack(again)[1]) == 2
    ids = torch.randint(5, 100, (2, 9))
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_default_keep_follows_the_paper_and_keeps_the_ends():
    assert default_keep(12, 6) == [0, 2, 4, 6, 8, 11]
    assert default_keep(12, 3) == [0, 6, 11]
    assert default_keep(6, 3) == [0, 2, 5]
    assert default_keep(6, 6) == list(range(6)) and default_keep(4, 1) == [0]


def test_drop_layers_cli_and_recipe(tmp_path, tiny_finetuned_dir, glue_dir):
    out = tmp_path / "one-layer"
    assert main(["drop-layers", "--model", str(tiny_finetuned_dir), "--keep", "1", "--output",
                 str(out), "--quiet"]) == 0
    a, b = load_file(tiny_finetuned_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert not any(".layer.1." in k for k in b)
    for k, v in b.items():
        assert torch.equal(v, a[k.replace(".layer.0.", ".layer.1.")]), k
    info = json.loads((out / "sparsity.json").read_text())
    assert info["layers"] == {"kept": [1], "from": 2, "rule": "given"}
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 1
    # in a recipe: drop, then prune and distil from the full-depth start model
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 16\nmax_seq_length: 32\nlayers: {keep: [0]}\n"
                      "pruning: {method: magnitude, init_sparsity: 0.5, final_sparsity: 0.5, "
                      "start_epoch: 0.5, end_epoch: 0.5, update_frequency: 1}\n")
    pruned = tmp_path / "pruned"
    assert main(["prune", "--recipe", str(recipe), "--model", str(tiny_finetuned_dir), "--task",
                 "sst2", "--data-dir", str(glue_dir), "--max-train-samples", "64", "--output",
                 str(pruned), "--quiet"]) == 0
    small = AutoModelForSequenceClassification.from_pretrained(pruned)
    assert small.config.num_hidden_layers == 1
    info = json.loads((pruned / "sparsity.json").read_text())
    assert info["settings"]["recipe"]["layers"]["keep"] == [0]
    assert info["settings"]["teacher"] == str(tiny_finetuned_dir)
    assert info["global_sparsity"] == pytest.approx(0.5, abs=1e-3)
