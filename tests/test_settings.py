"""Settings that would be lost: a recipe key given twice or misspelt, a Fisher block of 0, a
target pattern that matches no layer, another model's INT8 scales. Each is refused, not
silently dropped; the bundled recipes pass every check."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from obert.compression.plan import int8_plan
from obert.errors import ObertError
from obert.pruning.targets import find_targets, layer_names
from obert.training.recipe import RecipeError, bundled_recipes, load_recipe, recipe_from_dict


def _load(tmp_path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_recipe(path)


@pytest.mark.parametrize("text, where", [
    ("epochs: 2\nbatch_size: 8\nepochs: 3\n", "key 'epochs' is given twice on lines 1 and 3"),
    ("pruning:\n  method: obert\n  mask: block4\n  method: magnitude\n",
     "key 'method' is given twice on lines 2 and 4"),
    ("pruning: {fisher: {block_size: 4, block_size: 8}}\n",
     "key 'block_size' is given twice on line 1"),
])
def test_a_key_given_twice_is_refused_at_any_level(tmp_path, text, where):
    with pytest.raises(RecipeError, match=where):
        _load(tmp_path, text)


def test_a_merge_may_still_be_overridden(tmp_path):
    # YAML's << merge is an intended override, not a duplicate
    r = _load(tmp_path, "lr: &base {max: 1.0e-4, min: 0}\nquantization:\n  lr:\n    <<: *base\n"
              "    max: 2.0e-5\n")
    assert r.lr.max == 1e-4 and r.quantization.lr.max == 2e-5


@pytest.mark.parametrize("data, hint", [
    ({"distilation": {}}, "recipe key distilation is unknown: did you mean distillation?"),
    ({"pruning": {"fisher": {"blocksize": 4}}},
     "pruning.fisher.blocksize is unknown: did you mean pruning.fisher.block_size?"),
    ({"lr": {"mx": 1}}, "lr.mx is unknown: did you mean lr.max?"),
])
def test_an_unknown_key_suggests_the_closest(data, hint):
    with pytest.raises(RecipeError, match=hint.replace("?", r"\?")):
        recipe_from_dict(data)


def test_an_unknown_key_without_a_close_one_lists_the_level():
    with pytest.raises(RecipeError) as e:
        recipe_from_dict({"zzz": 1})
    assert "did you mean" not in str(e.value) and "epochs, batch_size" in str(e.value)


@pytest.mark.parametrize("mask, size", [("unstructured", 0), ("block4", 0), ("block4", -4),
                                        ("block4", 6)])
def test_a_fisher_block_that_is_no_block_is_refused(mask, size):
    with pytest.raises(RecipeError, match=f"pruning.fisher.block_size = {size} must be a "
                       "positive multiple"):
        recipe_from_dict({"pruning": {"mask": mask, "fisher": {"block_size": size}}})


def test_every_bundled_recipe_loads_strictly():
    names = bundled_recipes()
    assert len(names) > 60
    for name in names:
        assert load_recipe(name).epochs >= 0, name


@pytest.fixture(scope="module")
def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16)).eval()


def test_a_target_pattern_that_matches_nothing_is_refused(bert):
    with pytest.raises(ObertError, match="include pattern 'clasifier' .* matches no Linear of "
                       "BertForSequenceClassification: fix or drop it .*classifier"):
        find_targets(bert, include=["clasifier"])
    with pytest.raises(ObertError, match="exclude pattern 'qurey' .* none of the layers"):
        find_targets(bert, exclude=["qurey"])
    # a Linear that is no target: excluding it changes nothing, so it is refused too
    with pytest.raises(ObertError, match="exclude pattern 'classifier'"):
        find_targets(bert, exclude=["classifier"])
    # patterns that match keep working
    assert len(find_targets(bert, include=["classifier"], exclude=["query"])) == 11


def test_layer_names_fold_the_layer_stack():
    names = [f"bert.encoder.layer.{i}.{s}" for i in range(12) for s in ("a.q", "b.k")]
    assert layer_names(names + ["classifier"]) == "bert.encoder.layer.N.{a.q, b.k}, classifier"
    assert layer_names([f"x{i}" for i in range(20)], limit=3) == "x0, x1, x2, ... (17 more)"


def test_int8_scales_of_another_model_are_refused(bert, tmp_path):
    with pytest.raises(ObertError, match="names none of the model's INT8 Linears"):
        int8_plan(bert, {"nope": torch.ones(4)})
    lines: list[str] = []
    name = "bert.encoder.layer.0.attention.self.query"
    w = bert.get_submodule(name).weight
    plan = int8_plan(bert, {name: w.abs().amax(1) / 127, "nope": torch.ones(4)},
                     log=lines.append)
    assert "1 of 2 trained INT8 weight scales" in lines[0] and "nope" in lines[0]
    assert plan.trained == () and plan.stale == (name,)  # the weights are not on that grid
