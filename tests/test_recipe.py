"""Recipes and schedules: hand-computed values, the scaled rule's properties, validation."""

from __future__ import annotations

import math

import pytest
import yaml

from obert.cli import main
from obert.training.recipe import (
    RecipeError,
    bundled_recipes,
    load_recipe,
    recipe_from_dict,
    scaled_recipe,
)
from obert.training.schedule import (
    cubic_sparsity,
    lr_at,
    plan_steps,
    pruning_epochs,
    sparsity_targets,
)


def test_paper_schedule_by_hand():
    assert pruning_epochs(2, 26, 4) == [2, 6, 10, 14, 18, 22, 26]
    targets = sparsity_targets(2, 26, 4, 0.7, 0.9, "cubic")
    # s_t = s_f + (s_0 - s_f)(1 - t)^3, t = (epoch - 2) / 24
    assert targets[0] == (2, 0.7)  # the large first step
    assert targets[1][1] == pytest.approx(0.9 - 0.2 * (5 / 6) ** 3)  # 0.784259...
    assert targets[3][1] == pytest.approx(0.9 - 0.2 * 0.5**3)  # 0.875 at epoch 14
    assert targets[-1] == (26, 0.9)  # exactly the target
    assert cubic_sparsity(1.0, 0.7, 0.97) == 0.97
    assert pruning_epochs(0, 5, 2) == [0, 2, 4, 5]  # the end is always a step
    assert pruning_epochs(3, 3, 1) == [3]


def test_rewinds_by_hand():
    starts, total = [0, 2, 6], 10
    lr = [lr_at(s, starts, total, 1.0, 0.1) for s in range(total)]
    assert lr[0] == 1.0 and lr[1] == pytest.approx(0.55)
    assert lr[2] == 1.0  # rewound at the pruning step
    assert lr[4] == pytest.approx(0.55)
    assert lr[6] == 1.0 and lr[8] == pytest.approx(0.55) and lr[9] == pytest.approx(0.325)
    # warm-up ramps to the max, then the first cycle decays from the end of the warm-up
    warm = [lr_at(s, [0], 10, 1.0, 0.0, warmup_steps=2) for s in range(10)]
    assert warm[:3] == [0.5, 1.0, 1.0] and warm[6] == pytest.approx(0.5)
    # plain linear: one cycle
    assert lr_at(5, [0], 10, 1.0, 0.0) == pytest.approx(0.5)


def test_plan_in_optimizer_steps():
    plan = plan_steps(10, 30, sparsity_targets(2, 26, 4, 0.7, 0.9), cyclic=True)
    assert plan.total_steps == 300
    assert sorted(plan.prune_at) == [20, 60, 100, 140, 180, 220, 260]
    assert plan.cycle_starts == [0, 20, 60, 100, 140, 180, 220, 260]
    assert plan.final_sparsity == 0.9
    # fractional epochs round to the nearest optimizer step
    plan = plan_steps(3, 2.5, sparsity_targets(0.5, 2, 0.5, 0.5, 0.8), cyclic=False)
    assert plan.total_steps == 8 and sorted(plan.prune_at) == [2, 3, 4, 6]
    assert plan.cycle_starts == [0]


def test_bundled_recipes_match_the_paper():
    names = set(bundled_recipes())
    for t in ("80", "90", "97"):
        for task in ("glue", "squad"):
            assert {f"obert-{task}-{t}", f"gmp-{task}-{t}"} <= names
    assert {"obert-glue-block4-80", "obert-glue-block4-90", "obert-glue-init30-80"} <= names
    transfer = {"sparse-transfer-glue", "sparse-transfer-squad"}
    assert transfer <= names
    for name in names - transfer - {"smc-bench-gmp"}:  # SMC-Bench's own setup has no twin
        r = load_recipe(name)
        twin = load_recipe(name.replace("obert-", "gmp-") if name.startswith("obert-")
                           else name.replace("gmp-", "obert-"))
        assert r.pruning.method != twin.pruning.method
        r.pruning.method = twin.pruning.method
        assert r == twin  # a GMP* twin differs only in the scorer
    # upstream (MLM): 12 steps 0.25 epoch apart from 70%, LR cycles 5e-4 -> 5e-6, KD T = 5.5
    for t in (90, 97):
        r = load_recipe(f"obert-mlm-{t}")
        steps = r.pruning.targets()
        assert len(steps) == 12 and [e for e, _ in steps] == [0.25 * i for i in range(12)]
        assert steps[0][1] == 0.7 and steps[-1][1] == t / 100 and r.epochs == 3
        assert (r.lr.schedule, r.lr.max, r.lr.min) == ("cyclic_linear", 5e-4, 5e-6)
        assert (r.distillation.hardness, r.distillation.temperature) == (1.0, 5.5)
        assert (r.batch_size, r.max_seq_length, r.pruning.fisher.grad_batch_size) == (256, 512, 16)
    # sparse transfer: 8 epochs, masks fixed (no pruning), LR 1.5e-4 -> 1.5e-6, KD T = 5.5
    for name in transfer:
        r = load_recipe(name)
        assert r.pruning is None and r.epochs == 8 and r.lr.schedule == "linear"
        assert (r.lr.max, r.lr.min, r.distillation.temperature) == (1.5e-4, 1.5e-6, 5.5)
    r = load_recipe("obert-glue-90")
    assert [e for e, _ in r.pruning.targets()] == [2, 6, 10, 14, 18, 22, 26]
    assert r.pruning.targets()[-1][1] == 0.9 and r.pruning.init_sparsity == 0.7
    assert (r.lr.max, r.lr.min, r.distillation.hardness, r.distillation.temperature) == (
        8e-5, 8e-6, 1.0, 2.0)
    assert (r.pruning.fisher.num_grads, r.pruning.fisher.block_size, r.pruning.fisher.damp) == (
        1024, 50, 1e-7)
    assert load_recipe("obert-glue-block4-90").pruning.fisher.block_size == 32
    assert load_recipe("obert-squad-90").max_seq_length == 384
    assert load_recipe("obert-glue-init30-80").pruning.init_sparsity == 0.3
    # compound (PAPER.md §3 and §5): layers of BERT-base, init30, 4-blocks + 2 epochs of QAT
    for task in ("glue", "squad"):
        for layers, keep in ((6, [0, 2, 4, 6, 8, 11]), (3, [0, 6, 11])):
            plain = load_recipe(f"obert-{task}-L{layers}-80")
            assert plain.layers.keep == keep and plain.quantization is None
            assert plain.pruning.init_sparsity == 0.3 and plain.pruning.mask == "unstructured"
            for t in (80, 90):
                r = load_recipe(f"obert-{task}-L{layers}-block4-{t}-qat")
                assert r.layers.keep == keep and r.pruning.final_sparsity == t / 100
                assert (r.pruning.mask, r.pruning.fisher.block_size) == ("block4", 32)
                q = r.quantization
                assert (q.epochs, q.lr.max, q.lr.min) == (2, 2e-5, 0.0)


@pytest.mark.parametrize("epochs", [3, 10, 30])
def test_scaled_rule_properties(epochs):
    grid = [round(0.05 * i, 2) for i in range(1, 20)] + [0.97, 0.98, 0.99]
    prev = None
    for s in grid:
        r = scaled_recipe(s, epochs)
        p = r.pruning
        steps = p.targets()
        assert steps[-1][1] == s and p.final_sparsity == s  # ends exactly at the target
        assert p.init_sparsity <= s and steps[0][1] <= s  # first step at most the target
        assert all(a[1] <= b[1] for a, b in zip(steps, steps[1:], strict=False))
        assert p.end_epoch <= epochs
        if len(steps) > 1:
            assert steps[0][0] == pytest.approx(epochs / 15)
        cur = (len(steps), epochs - p.end_epoch)
        if prev is not None:  # more steps, more recovery (and so more LR cycles) as S grows
            assert cur[0] >= prev[0] and cur[1] >= prev[1] - 1e-6, (s, cur, prev)
        prev = cur
    assert len(scaled_recipe(0.8, 30).pruning.targets()) == 3
    assert len(scaled_recipe(0.9, 30).pruning.targets()) == 6
    assert len(scaled_recipe(0.97, 30).pruning.targets()) == 12
    assert scaled_recipe(0.9, 30, mask="block4").pruning.block_size == 32
    assert scaled_recipe(0.9, 30).pruning.block_size == 50


def test_recipe_command_prints_loadable_yaml(capsys, tmp_path):
    assert main(["recipe", "--target-sparsity", "0.9", "--epochs", "12", "--method",
                 "magnitude"]) == 0
    text = capsys.readouterr().out
    r = recipe_from_dict(yaml.safe_load(text))
    assert r.pruning.method == "magnitude" and r.pruning.targets()[-1][1] == 0.9
    assert main(["recipe", "--list"]) == 0
    assert "obert-glue-90" in capsys.readouterr().out


@pytest.mark.parametrize("patch, key", [
    ({"pruning": {"final_sparsty": 0.9}}, "pruning.final_sparsty is unknown"),
    ({"epochs": "ten"}, "epochs must be a number"),
    ({"batch_size": 3.5}, "batch_size must be an integer"),
    ({"pruning": {"final_sparsity": 1.2}}, "pruning.final_sparsity = 1.2 is outside"),
    ({"pruning": {"method": "movement"}}, "pruning.method = 'movement' is not one of"),
    ({"pruning": {"mask": "block4", "fisher": {"block_size": 50}}},
     "pruning.fisher.block_size = 50 must be a positive multiple"),
    ({"pruning": {"fisher": {"num_grads": 0}}}, "pruning.fisher.num_grads = 0 must be"),
    ({"targets": {"include": ["["]}}, "targets.include: '\\[' is not a valid regex"),
    ({"pruning": {"end_epoch": 40}}, "pruning.end_epoch = 40.0 is past epochs"),
    ({"distillation": {"hardness": 2}}, "distillation.hardness = 2.0 is outside"),
    ({"lr": "fast"}, "lr must be a mapping"),
    ({"targets": {"include": "pooler"}}, "targets.include must be a list of strings"),
])
def test_validation_names_the_key(patch, key):
    with pytest.raises(RecipeError, match="recipe key " + key.replace("(", r"\(")):
        recipe_from_dict(patch)


def test_block4_takes_the_papers_block_and_magnitude_ignores_the_fisher():
    r = recipe_from_dict({"pruning": {"mask": "block4"}})
    assert r.pruning.fisher.block_size is None and r.pruning.block_size == 32
    r = recipe_from_dict({"pruning": {"method": "magnitude", "mask": "block4",
                                      "fisher": {"block_size": 50}}})
    assert r.pruning.method == "magnitude"


def test_yaml_number_without_dot_and_null_pruning():
    r = recipe_from_dict(yaml.safe_load("lr: {max: 8e-5, min: 0}\npruning: null\n"))
    assert r.lr.max == 8e-5 and r.pruning is None and math.isclose(r.lr.min, 0)


def test_bad_recipe_file_is_one_line(tmp_path, capsys, tiny_model_dir):
    bad = tmp_path / "r.yaml"
    bad.write_text("epochs: 2\npruning: {final_sparsity: 1.5}\n")
    rc = main(["prune", "--recipe", str(bad), "--model", str(tiny_model_dir), "--task", "sst2",
               "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "pruning.final_sparsity" in err
    assert not (tmp_path / "out").exists()
    bad.write_text("epochs: [1\n")
    assert main(["prune", "--recipe", str(bad), "--model", "m", "--task", "sst2",
                 "--output", str(tmp_path / "out")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["prune", "--recipe", "no-such-recipe", "--model", "m", "--task", "sst2",
                 "--output", str(tmp_path / "out")]) == 2
    assert "neither a file nor a bundled recipe" in capsys.readouterr().err


# --- the bundled recipes come from one table (obert.training.recipe_table) --------------------


def test_bundled_files_are_the_table_regenerated_byte_for_byte():
    from obert.training import recipe_table as rt

    names = [row.name for row in rt.TABLE]
    assert len(names) == len(set(names)) == 67
    assert set(bundled_recipes()) == set(names)  # what --recipe NAME finds is the table
    for row in rt.TABLE:
        text = bundled_recipes()[row.name].read_text(encoding="utf-8")
        assert text == rt.render(row), f"{row.name}: run python -m obert.training.recipe_table --write"
        assert text.splitlines()[0] == rt.GENERATED
    assert rt.differences(rt.recipes_folder()) == []


def test_generator_check_finds_drift_and_write_repairs_it(tmp_path, capsys):
    from obert.training import recipe_table as rt

    assert rt.main(["--folder", str(tmp_path), "--write"]) == 0
    edited = tmp_path / "gmp-glue-90.yaml"
    edited.write_text(edited.read_text().replace("final_sparsity: 0.9", "final_sparsity: 0.8"))
    (tmp_path / "stray.yaml").write_text("epochs: 1\n")
    (tmp_path / "obert-mc-50.yaml").unlink()
    capsys.readouterr()
    assert rt.main(["--folder", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "gmp-glue-90.yaml: differs" in err and "stray.yaml: no row" in err
    assert "obert-mc-50.yaml: missing" in err
    assert rt.main(["--folder", str(tmp_path), "--write"]) == 1  # the stray file stays, named
    assert rt.differences(tmp_path) == ["stray.yaml: no row in the table"]


def _printed(capsys, argv: list[str]):
    capsys.readouterr()
    assert main(["recipe", *argv]) == 0
    out = capsys.readouterr().out
    return recipe_from_dict(yaml.safe_load(out)), out


def test_recipe_command_reproduces_every_bundled_recipe(capsys):
    from obert.training import recipe_table as rt

    for row in rt.TABLE:
        r, out = _printed(capsys, row.spec.argv())
        assert r == load_recipe(row.name), row.name
        assert f"# The bundled recipe {row.name} has these settings" in out
    # the example, flags in another order, gmp for magnitude
    r, out = _printed(capsys, ["--method", "gmp", "--mask", "block4", "--target-sparsity", "0.8",
                               "--epochs", "30", "--task", "squad", "--layers", "6", "--qat",
                               "--schedule", "paper"])
    assert r == load_recipe("gmp-squad-L6-block4-80-qat") and "gmp-squad-L6-block4-80-qat" in out
    assert r.layers.keep == [0, 2, 4, 6, 8, 11] and r.pruning.init_sparsity == 0.3  # init30
    # a task name picks its family; a cell that is not bundled says so by naming none
    r, out = _printed(capsys, ["--schedule", "paper", "--task", "mnli", "--epochs", "30",
                               "--target-sparsity", "0.9"])
    assert r == load_recipe("obert-glue-90")
    r, out = _printed(capsys, ["--schedule", "paper", "--task", "squad", "--epochs", "15",
                               "--target-sparsity", "0.9", "--layers", "3", "--qat"])
    assert "bundled recipe" not in out
    # the paper's schedule in proportion to the epochs: dense to 1, steps every 2 to 13
    assert [e for e, _ in r.pruning.targets()] == [1, 3, 5, 7, 9, 11, 13]
    assert r.layers.keep == [0, 6, 11] and r.quantization.epochs == 2 and r.epochs == 15


def test_recipe_command_keeps_the_scaled_rule_by_default(capsys):
    r, out = _printed(capsys, ["--target-sparsity", "0.9", "--epochs", "3"])
    assert r == scaled_recipe(0.9, 3)
    assert out.startswith("# Same as: obert recipe --schedule scaled --target-sparsity 0.9 "
                          "--epochs 3 --task glue\n")
    r, _ = _printed(capsys, ["--target-sparsity", "0.9", "--epochs", "3", "--task", "mlm"])
    assert (r.batch_size, r.lr.max, r.lr.min, r.distillation.temperature) == (256, 5e-4, 5e-6, 5.5)
    r, _ = _printed(capsys, ["--target-sparsity", "0.9", "--epochs", "3", "--layers", "6"])
    assert r.pruning.init_sparsity == 0.3 and r.layers.keep == [0, 2, 4, 6, 8, 11]
    r, _ = _printed(capsys, ["--target-sparsity", "0.9", "--epochs", "3", "--layers", "6",
                             "--first-step", "0.7"])
    assert r.pruning.init_sparsity == 0.7


def test_recipe_list_shows_the_table_with_sources_and_figures(capsys):
    from obert.training import recipe_table as rt

    capsys.readouterr()
    assert main(["recipe", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 120
    by_name = {line.split()[0]: line for line in lines[1:len(rt.TABLE) + 1]}
    assert list(by_name) == [row.name for row in rt.TABLE]
    assert by_name["obert-squad-90"].endswith("§2 downstream    SQuAD F1 88.31")
    assert by_name["obert-squad-L3-block4-90-qat"].endswith("SQuAD F1 79.66")
    assert by_name["gmp-squad-90"].endswith("—")  # the paper has no GMP★ figure
    assert by_name["obert-glue-init30-80"].split()[1:8] == [
        "paper", "glue", "obert", "80%", "0.3", "unstr.", "12"]
    assert by_name["gmp-glue-L6-block4-80-qat"].split()[1:10] == [
        "paper", "glue", "gmp", "80%", "0.3", "block4", "6", "yes", "30"]
