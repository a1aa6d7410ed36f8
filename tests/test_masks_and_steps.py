"""The pruning core's second pass: one mask owner, gradients in float32 under any autocast, a
Fisher fed only unpruned gradients, the LR following global_step, several sparsities from one
Fisher."""

from __future__ import annotations

import json
from pathlib import Path

import accelerate
import pytest
import torch
from safetensors.torch import load_file
from test_pruner import fake_batches, tiny_bert

from obert.cli import main
from obert.pruning.fisher import EmpiricalFisher
from obert.pruning.gradients import collect_grads
from obert.pruning.masks import MaskSet
from obert.pruning.pruner import MagnitudePruner, OBSPruner
from obert.pruning.targets import find_targets
from obert.training.schedule import lr_at


def test_block4_masks_from_an_unstructured_sparse_start():
    torch.manual_seed(0)
    w = torch.randn(4, 8)
    w[0, 0] = 0.0            # group (0, 0..3): first weight 0, the others not -> kept, whole
    w[1, 4:8] = 0.0          # group (1, 4..7): all 0 -> pruned
    w[2, 1] = w[2, 3] = 0.0  # zeros inside a kept group
    masks = MaskSet({"w": w}, k=4)
    keep = masks.group_keep("w").view(4, 2)
    assert keep.tolist() == [[True, True], [True, False], [True, True], [True, True]]
    groups = masks.masks["w"].view(-1, 4)
    assert ((groups.all(-1)) | (~groups).all(-1)).all()  # one flag per group, never mixed
    assert masks.sparsity() == pytest.approx(4 / 32)
    # A later block step keeps the pruned group pruned and prunes whole groups only.
    MagnitudePruner(masks).step(0.5)
    g = (w.view(-1, 4) == 0).sum(-1)
    assert set(g.tolist()) <= {0, 2, 4} and bool((w[1, 4:8] == 0).all())
    for grp, kept in zip(w.view(-1, 4), masks.group_keep("w"), strict=True):
        if not kept:
            assert (grp == 0).all()


def test_mask_set_hooks_optimizer_state_and_files(tmp_path: Path):
    lin = torch.nn.Linear(8, 3)
    masks = MaskSet({"lin": lin.weight}, k=4)
    masks.prune_groups({"lin": torch.tensor([True, False, False, True, False, False])})
    masks.apply()
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    masks.attach()
    for _ in range(3):
        opt.zero_grad()
        lin(torch.randn(5, 8)).pow(2).sum().backward()
        assert (lin.weight.grad[~masks.masks["lin"]] == 0).all()  # the hook masked it
        opt.step()
        masks.apply()
    masks.detach()
    opt.state[lin.weight]["exp_avg"].fill_(1.0)
    masks.clear_optimizer_state(opt)
    assert (opt.state[lin.weight]["exp_avg"][~masks.masks["lin"]] == 0).all()
    masks.save(tmp_path / "m.safetensors")
    other = MaskSet.dense({"lin": lin.weight}, k=4)
    other.load(tmp_path / "m.safetensors")
    assert torch.equal(other.masks["lin"], masks.masks["lin"])
    assert other.checksum() == masks.checksum()


def test_gradients_in_eval_mode_float32_under_an_autocast_forward():
    model = tiny_bert()
    model.train()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    # What accelerate does under --bf16: the *instance's* forward wrapped in autocast.
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    seen: list[tuple[bool, torch.dtype]] = []
    query = model.bert.encoder.layer[0].attention.self.query
    query.register_forward_hook(lambda m, i, o: seen.append((m.training, o.dtype)))
    weights = {n: m.weight for n, m in find_targets(model).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and a caller inside autocast
        grads = list(collect_grads(model, weights, fake_batches(), 3, quiet=True))
    assert seen == [(False, torch.float32)] * 3  # eval mode, no half precision
    assert all(g.dtype == torch.float32 for gs in grads for g in gs.values())
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    seen.clear()
    model(**fake_batches(1)[0])  # the patched forward itself is half precision
    assert seen[0][1] == torch.bfloat16


def test_pruned_positions_stay_out_of_the_fisher():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    masks = MaskSet({"w": w})
    masks.prune_groups({"w": torch.rand(60) < 0.4})
    masks.apply()
    pruner = OBSPruner(masks, block_size=20, damp=1e-3)
    pruner.begin()
    ref = EmpiricalFisher(60, 20, 1e-3)
    for _ in range(12):
        g = torch.randn(6, 10) + 5.0  # large and non-zero everywhere, pruned positions too
        pruner.add_grads({"w": g})
        ref.add_grad(g * masks.masks["w"])
    assert torch.allclose(pruner.current_fisher_inv()["w"], ref.fisher_inv())


def _prune(recipe: Path, model: Path, glue: Path, out: Path, *extra: str) -> int:
    return main(["prune", "--recipe", str(recipe), "--model", str(model), "--task", "sst2",
                 "--data-dir", str(glue), "--max-train-samples", "64", "--output", str(out),
                 "--logging-steps", "1", "--quiet", *extra])


RECIPE = """
epochs: 2
batch_size: 16
max_seq_length: 32
lr: {schedule: cyclic_linear, max: 1e-3, min: 1e-4}
pruning: {method: obert, init_sparsity: 0.5, final_sparsity: 0.7, start_epoch: 0.5,
          end_epoch: 1.5, update_frequency: 0.5, fisher: {num_grads: 4, block_size: 16,
          grad_batch_size: 4}}
distillation: {hardness: 0.0}
"""


def test_bf16_prune_takes_fisher_gradients_in_float32(tmp_path, tiny_model_dir, glue_dir,
                                                      monkeypatch):
    import obert.workflows.prune as prune_mod

    seen: list[tuple[bool, bool, torch.dtype]] = []
    original = prune_mod.load_models

    def spy(*args, **kwargs):
        models = original(*args, **kwargs)
        q = models.model.bert.encoder.layer[0].attention.self.query
        q.register_forward_hook(lambda m, i, o: seen.append(
            (m.training, torch.is_grad_enabled(), o.dtype)))
        return models

    monkeypatch.setattr(prune_mod, "load_models", spy)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    assert _prune(recipe, tiny_model_dir, glue_dir, tmp_path / "out", "--bf16") == 0
    training = {d for t, g, d in seen if t}
    fisher = {d for t, g, d in seen if not t and g}  # eval mode with gradients: the Fisher
    assert training == {torch.bfloat16}  # autocast was on for training...
    assert fisher == {torch.float32}  # ...and off for every Fisher gradient
    info = json.loads((tmp_path / "out" / "sparsity.json").read_text())
    assert [h["step"] for h in info["pruning_steps"]] == [2, 4, 6]


def test_lr_follows_global_step_when_a_step_is_skipped(tmp_path, tiny_model_dir, glue_dir,
                                                       monkeypatch):
    calls = {"n": 0}

    def skipped(self) -> bool:  # as if the 3rd optimizer step overflowed in fp16
        calls["n"] += 1
        return calls["n"] == 3

    monkeypatch.setattr(accelerate.Accelerator, "optimizer_step_was_skipped", property(skipped))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    assert _prune(recipe, tiny_model_dir, glue_dir, tmp_path / "out") == 0
    assert calls["n"] >= 8
    recs = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["learning_rate"] for r in recs if "learning_rate" in r}
    assert sorted(lrs) == list(range(1, 9))
    for step, lr in lrs.items():  # the LR logged at step s is the one step s used
        assert lr == pytest.approx(lr_at(step - 1, [0, 2, 4, 6], 8, 1e-3, 1e-4)), step


def test_several_sparsities_equal_separate_runs(tmp_path, tiny_finetuned_dir, glue_dir, capfd):
    common = ["--model", str(tiny_finetuned_dir), "--task", "sst2", "--data-dir", str(glue_dir),
              "--num-grads", "6", "--grad-batch-size", "4", "--max-train-samples", "64",
              "--quiet"]
    assert main(["oneshot", *common, "--sparsity", "0.7", "0.5", "--output",
                 str(tmp_path / "both")]) == 0
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "it/s]" not in err  # --quiet: no bars
    assert err.count("Fisher inverse:") == 1  # one Fisher for both sparsities
    summary = json.loads((tmp_path / "both" / "results.json").read_text())
    assert [r["sparsity"] for r in summary] == [0.5, 0.7]
    for s in ("0.5", "0.7"):
        assert main(["oneshot", *common, "--sparsity", s, "--output", str(tmp_path / s)]) == 0
        a = load_file(tmp_path / "both" / f"sparsity-{float(s):.2f}" / "model.safetensors")
        b = load_file(tmp_path / s / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k] == 0, b[k] == 0), k
            assert torch.allclose(a[k], b[k], atol=1e-6), k
        info = json.loads((tmp_path / "both" / f"sparsity-{float(s):.2f}" / "sparsity.json")
                          .read_text())
        assert info["settings"]["sparsity"] == float(s)


def test_sparse_transfer_keeps_every_zero(tmp_path, tiny_finetuned_dir, glue_dir):
    """finetune --keep-sparsity, and prune with `pruning: null`: the start model's zeros are
    fixed masks; every one stays exactly 0, the other weights move, and the origin is recorded."""
    pruned = tmp_path / "pruned"
    assert main(["oneshot", "--model", str(tiny_finetuned_dir), "--task", "sst2", "--sparsity",
                 "0.6", "--method", "magnitude", "--output", str(pruned), "--quiet"]) == 0
    data = ["--task", "sst2", "--data-dir", str(glue_dir), "--max-train-samples", "64", "--quiet"]
    runs = {
        "finetune": ["finetune", "--model", str(pruned), *data, "--epochs", "1", "--lr", "1e-2",
                     "--keep-sparsity"],
        "prune": ["prune", "--recipe", str(tmp_path / "null.yaml"), "--model", str(pruned), *data],
        "dense": ["finetune", "--model", str(pruned), *data, "--epochs", "1", "--lr", "1e-2"],
    }
    (tmp_path / "null.yaml").write_text("epochs: 1\nbatch_size: 16\nmax_seq_length: 32\n"
                                        "lr: {max: 1e-2, min: 1e-3}\npruning: null\n"
                                        "distillation: {hardness: 0.0}\n")
    start = load_file(pruned / "model.safetensors")
    targets = [k for k in start if ".layer." in k and k.endswith("weight") and start[k].dim() == 2]
    for name, argv in runs.items():
        assert main([*argv, "--output", str(tmp_path / name)]) == 0, name
        after = load_file(tmp_path / name / "model.safetensors")
        zeros = sum(int((start[k] == 0).sum()) for k in targets)
        kept = sum(int(((start[k] == 0) & (after[k] == 0)).sum()) for k in targets)
        moved = sum(int(((start[k] != 0) & (after[k] != start[k])).sum()) for k in targets)
        assert moved > 0.5 * sum(start[k].numel() for k in targets) - zeros, name
        info = json.loads((tmp_path / name / "sparsity.json").read_text())
        if name == "dense":  # without the masks the zeros grow back: the masks do the work
            assert kept < zeros
            continue
        assert kept == zeros, f"{name}: {zeros - kept} pruned weights revived"
        assert info["method"] in ("sparse-transfer", "sparse-transfer-distill")
        assert info["masks"]["origin"] == str(pruned)
        assert info["masks"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
        assert info["masks"]["upstream"]["method"] == "magnitude"
