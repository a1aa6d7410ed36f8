"""INT8 quantization-aware training: the recipe section, the plan and LR, a run whose pruned
weights stay exactly 0 through QAT, weights saved as exactly s_w·W_q with their scales, and
the compiled INT8 model scoring what the fake-quantized model scored."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from obert.cli import main
from obert.compression.plan import int8_cost_note, int8_linears
from obert.compression.quant import FakeQuantLinear, quantize_rows
from obert.errors import ObertError
from obert.training.gradual import MaskedPruning
from obert.training.recipe import RecipeError, recipe_from_dict
from obert.training.schedule import lr_at


def test_quantization_section_defaults_and_checks():
    r = recipe_from_dict({"epochs": 30, "quantization": {"epochs": 1}})
    q = r.quantization
    assert (q.epochs, q.lr.schedule, q.lr.max, q.lr.min) == (1, "linear", 2e-5, 0.0)
    r = recipe_from_dict({"epochs": 0, "pruning": None, "quantization": {"epochs": 1}})
    assert r.plan(10).qat_start == 0 and r.plan(10).total_steps == 10
    for bad, key in [({"epochs": 0}, "epochs"),
                     ({"epochs": 0, "quantization": {"epochs": 1}}, "epochs"),
                     ({"quantization": {"epochs": 0}}, "quantization.epochs"),
                     ({"quantization": {"lr": {"schedule": "cyclic_linear"}}},
                      "quantization.lr.schedule"),
                     ({"quantization": {"bits": 4}}, "quantization.bits")]:
        with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
            recipe_from_dict(bad)


def test_plan_and_lr_of_the_qat_phase():
    r = recipe_from_dict({"epochs": 3, "lr": {"max": 1e-3, "min": 1e-4},
                          "pruning": {"init_sparsity": 0.5, "final_sparsity": 0.8,
                                      "start_epoch": 1, "end_epoch": 2, "update_frequency": 0.5},
                          "quantization": {"epochs": 2, "lr": {"max": 1e-4, "min": 0}}})
    plan = r.plan(8)
    assert (plan.qat_start, plan.total_steps) == (24, 40)
    assert sorted(plan.prune_at) == [8, 12, 16]
    lr = r.lr_fn(plan)
    for s in range(24):  # the pruning part decays to its min by the start of QAT
        assert lr(s) == pytest.approx(lr_at(s, [0, 8, 12, 16], 24, 1e-3, 1e-4))
    assert lr(24) == pytest.approx(1e-4) and lr(32) == pytest.approx(5e-5)
    assert lr(39) == pytest.approx(1e-4 / 16)


def test_int8_layers_are_the_encoders_and_bad_models_are_refused(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    m = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    names = list(int8_linears(m))
    assert len(names) == 12 and all(".layer." in n for n in names)
    with pytest.raises(ObertError, match="no encoder Linear layers to quantize"):
        int8_linears(nn.Sequential(nn.Linear(4, 4)))
    # unstructured masks under INT8 kernels: the log says what reading them as 4-blocks costs
    with torch.no_grad():
        for lin in int8_linears(m).values():
            lin.weight.mul_(torch.rand_like(lin.weight) > 0.8)
    note = int8_cost_note(m)
    assert note is not None and "4-blocks" in note and "block4" in note
    assert int8_cost_note(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)) is None


def _prune(recipe, model, glue_dir, out, *extra) -> int:
    return main(["prune", "--recipe", str(recipe), "--model", str(model), "--task", "sst2",
                 "--data-dir", str(glue_dir), "--max-train-samples", "128", "--output", str(out),
                 "--teacher", str(model), "--logging-steps", "4", "--save-steps", "8",
                 "--quiet", *extra])


@pytest.mark.slow  # trains or starts processes: make test runs it, test-fast does not
def test_prune_then_qat_holds_masks_and_writes_int8_weights(tmp_path, tiny_model_dir, glue_dir,
                                                            monkeypatch, capsys):
    """2 epochs of 4-block pruning to 60%, then 1 epoch of QAT in the same run: pruned weights
    are exactly 0 after every optimizer step, the Linears are fake-quantized from step 16 on,
    the saved weights are exactly s_w·W_q and evaluate --runtime int8 scores (within the
    kernels' rounding) what the fake-quantized model scored."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 2\nbatch_size: 16\nmax_seq_length: 32\n"
                      "lr: {schedule: cyclic_linear, max: 1e-3, min: 1e-4}\n"
                      "pruning: {method: magnitude, mask: block4, init_sparsity: 0.4, "
                      "final_sparsity: 0.6, start_epoch: 0.5, end_epoch: 1, "
                      "update_frequency: 0.5}\n"
                      "quantization: {epochs: 1, lr: {max: 1e-3}}\n")
    seen = []
    original = MaskedPruning.on_step_end

    def checked(self, args, state, control, model=None, optimizer=None, **kw):
        out = original(self, args, state, control, model=model, optimizer=optimizer, **kw)
        for name, w in self.weights.items():
            assert (w[~self.masks.masks[name]] == 0).all(), f"{name} at {state.global_step}"
        quantized = [isinstance(model.get_submodule(n), FakeQuantLinear) for n in self.weights]
        seen.append((state.global_step, all(quantized), any(quantized)))
        return out

    monkeypatch.setattr(MaskedPruning, "on_step_end", checked)
    out = tmp_path / "qat"
    assert _prune(recipe, tiny_model_dir, glue_dir, out) == 0
    assert [s for s, _, _ in seen] == list(range(1, 25))
    assert all(a for s, a, _ in seen if s > 16) and not any(b for s, _, b in seen if s <= 16)
    info = json.loads((out / "sparsity.json").read_text())
    q = info["quantization"]
    assert q["qat_start_step"] == 16 and len(q["layers"]) == 12
    # the masks' 60%, plus the few weights INT8 rounds to 0 (|w| < s_w/2)
    assert 0.6 - 1e-3 <= info["global_sparsity"] <= 0.61
    weights = load_file(out / "model.safetensors")
    scales = load_file(out / "quantization.safetensors")
    assert len(scales) == 12
    for key, s in scales.items():
        w = weights[key.replace(".weight_scale", ".weight")]
        wq, _ = quantize_rows(w, s)
        assert torch.equal(w, wq.float() * s[:, None])  # exactly the dequantized INT8 values
        assert wq.abs().amax() <= 127
    # the model as it runs: compiled INT8 from the trained scales scores what QAT's eval did
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--task", "sst2", "--data-dir", str(glue_dir),
                 "--runtime", "int8", "--json", "--quiet"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["kernels"]["trained_scales"] and row["kernels"]["int8"] == 12
    final = json.loads((out / "eval_results.json").read_text())
    assert abs(row["accuracy"] - final["accuracy"]) <= 2 / 872  # a tie or two may flip
    # rt.compile on the loaded folder finds the trained scales by itself
    from transformers import AutoModelForSequenceClassification

    import obert.runtime as rt

    c = rt.compile(AutoModelForSequenceClassification.from_pretrained(out), "int8")
    name = next(k for k in scales if "intermediate" in k).removesuffix(".weight_scale")
    assert torch.equal(c.get_submodule(name).sw, scales[name + ".weight_scale"])
    # bench --task: accuracy and latency of the same engines, side by side
    assert main(["bench", "--model", str(out), "--task", "sst2", "--data-dir", str(glue_dir),
                 "--engines", "dense-fp32,sparse-int8", "--warmup", "0", "--repeats", "1",
                 "--seq-len", "32", "--json", "--quiet"]) == 0
    bench = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    acc = {r["name"]: r["metrics"]["accuracy"] for r in bench["results"]}
    assert acc["sparse-int8"] == row["accuracy"] and bench["task"] == "sst2"
    # exported with --int8 from the trained scales: the int8 initializers hold exactly the
    # model's zeros (its weights are s_w·W_q already), and ONNX Runtime agrees on SST-2 rows
    pytest.importorskip("onnxruntime")
    assert main(["export", "--model", str(out), "--output", str(tmp_path / "q.onnx"), "--int8",
                 "--task", "sst2", "--data-dir", str(glue_dir), "--json", "--quiet"]) == 0
    exp = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model_zeros = sum(int((w == 0).sum()) for k, w in weights.items()
                      if k.replace(".weight", ".weight_scale") in scales)
    head = AutoModelForSequenceClassification.from_pretrained(out)
    fp32_zeros = sum(int((m.weight == 0).sum()) for n, m in head.named_modules()
                     if isinstance(m, nn.Linear) and ".layer." not in n)
    assert exp["trained_scales"] and exp["zeros"] == model_zeros + fp32_zeros
    assert exp["max_abs_diff"] <= 1e-2 * max(1, exp["max_logit"])


@pytest.mark.slow  # trains or starts processes: make test runs it, test-fast does not
def test_qat_alone_on_a_pruned_model_keeps_its_zeros(tmp_path, tiny_model_dir, glue_dir):
    pruned = tmp_path / "pruned"
    assert main(["oneshot", "--model", str(tiny_model_dir), "--task", "sst2", "--data-dir",
                 str(glue_dir), "--method", "magnitude", "--sparsity", "0.7",
                 "--output", str(pruned), "--quiet"]) == 0
    recipe = tmp_path / "q.yaml"
    recipe.write_text("epochs: 0\npruning: null\nbatch_size: 16\nmax_seq_length: 32\n"
                      "quantization: {epochs: 1, lr: {max: 1e-3}}\n")
    out = tmp_path / "q"
    assert _prune(recipe, pruned, glue_dir, out) == 0
    before, after = load_file(pruned / "model.safetensors"), load_file(out / "model.safetensors")
    moved = 0
    for k, w in before.items():
        if ".layer." in k and k.endswith("weight") and w.dim() == 2:
            assert (after[k][w == 0] == 0).all(), k
            moved += int((after[k] != w).any())
    assert moved == 12
    info = json.loads((out / "sparsity.json").read_text())
    assert info["quantization"]["qat_start_step"] == 0 and info["masks"]["origin"]


class _Killed(KeyboardInterrupt):
    pass


@pytest.mark.slow  # trains or starts processes: make test runs it, test-fast does not
def test_kill_during_qat_and_resume_equals_unbroken(tmp_path, tiny_model_dir, glue_dir,
                                                    monkeypatch):
    """A run killed inside its QAT phase resumes into QAT (the Linears fake-quantized again
    before the first resumed step) and ends where the unbroken run ends."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 16\nmax_seq_length: 32\n"
                      "lr: {schedule: linear, max: 1e-3, min: 1e-4}\n"
                      "pruning: {method: magnitude, init_sparsity: 0.5, final_sparsity: 0.5, "
                      "start_epoch: 0.5, end_epoch: 0.5, update_frequency: 1}\n"
                      "quantization: {epochs: 1, lr: {max: 1e-3}}\n")
    whole = tmp_path / "whole"
    assert _prune(recipe, tiny_model_dir, glue_dir, whole) == 0
    original = MaskedPruning.on_save

    def kill_at_12(self, args, state, control, **kw):
        original(self, args, state, control, **kw)
        if state.global_step == 12:  # 4 steps into QAT (it starts at step 8)
            raise _Killed

    broken = tmp_path / "broken"
    monkeypatch.setattr(MaskedPruning, "on_save", kill_at_12)
    assert _prune(recipe, tiny_model_dir, glue_dir, broken, "--save-steps", "4") == 130
    monkeypatch.setattr(MaskedPruning, "on_save", original)
    assert _prune(recipe, tiny_model_dir, glue_dir, broken, "--save-steps", "4",
                  "--resume") == 0
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert load_file(whole / "quantization.safetensors").keys() == \
        load_file(broken / "quantization.safetensors").keys()
    ea = json.loads((whole / "eval_results.json").read_text())
    assert ea == json.loads((broken / "eval_results.json").read_text())
