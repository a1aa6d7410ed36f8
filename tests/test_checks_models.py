"""Numbers that are not finite, and models checked against each other and their task (issue 24).

The command-line cases (exit 2, one line, nothing written) are in test_bad_input.py; these are
the checks themselves, and the runs that diverge half-way."""

from __future__ import annotations

import functools
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    RobertaConfig,
    RobertaModel,
)

from obert.cli import build_parser, main
from obert.data.tasks import get_task
from obert.errors import ObertError
from obert.finite import check_finite, non_finite
from obert.models import (
    HeadInfo,
    check_encoder,
    check_fits_task,
    check_head,
    check_same_vocab,
    max_tokens,
    trained_on_other_task,
)

# -- finiteness ---------------------------------------------------------------------------------


def _tiny() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32))


def test_check_finite_names_the_first_bad_tensor_and_counts_it():
    model = _tiny()
    check_finite(model, "model m")  # a healthy model passes
    with torch.no_grad():
        w = model.bert.encoder.layer[0].attention.self.query.weight
        w[0, :3] = float("nan")
        w[1, 0] = float("inf")
        model.classifier.bias[1] = float("-inf")
    with pytest.raises(ObertError) as e:
        check_finite(model, "model m", "fix it")
    assert str(e.value) == ("model m has 4 non-finite values (NaN or inf) in "
                            "bert.encoder.layer.0.attention.self.query.weight (and 1 more "
                            "tensors): fix it")
    assert "\n" not in str(e.value)


def test_a_sum_that_overflows_is_not_a_false_alarm():
    # fp16 weights whose sum overflows to inf are finite: the exact count decides
    t = torch.full((10,), 6e4, dtype=torch.float16)
    assert not torch.isfinite(t.sum())
    assert non_finite([("w", t)]) == []
    assert non_finite([("w", torch.tensor([1.0, float("nan")])), ("i", torch.tensor([1, 2]))]) \
        == [("w", 1)]


def test_check_finite_is_cheap_on_minilm(minilm_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_path)
    check_finite(model, "minilm")
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        check_finite(model, "minilm")
        best = min(best, time.perf_counter() - t)
    # one sum per tensor, one thread: 6-10 ms for 22.7M weights (isfinite(t).all(): 160 ms);
    # the bound leaves room for a busy machine
    assert best < 0.08, best


def test_save_model_refuses_non_finite_weights(tmp_path):
    from obert.io import save_model

    model = _tiny()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    with pytest.raises(ObertError, match="the model to be written has 1 non-finite value"):
        save_model(model, None, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _nan_logits_from_call(monkeypatch, n: int) -> None:
    """The training forward passes of every BERT classifier return NaN logits from the n-th on
    (both the task loss and KD go NaN)."""
    orig = BertForSequenceClassification.forward
    calls = {"n": 0}

    @functools.wraps(orig)  # Trainer keeps the columns its signature names
    def forward(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= n:
                out.logits = out.logits * float("nan")
                if out.loss is not None:
                    out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(BertForSequenceClassification, "forward", forward)


@pytest.mark.slow  # trains
def test_finetune_stops_at_a_non_finite_loss(tmp_path, tiny_model_dir, glue_dir, capsys,
                                              monkeypatch):
    _nan_logits_from_call(monkeypatch, 3)
    out = tmp_path / "out"
    rc = main(["finetune", "--model", str(tiny_model_dir), "--task", "sst2", "--data-dir",
               str(glue_dir), "--max-train-samples", "64", "--batch-size", "8", "--output",
               str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("obert: error: the training loss is nan at optimizer step 3")
    assert "lower --lr" in err[-1]
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # trains
def test_prune_stops_at_a_non_finite_loss_and_keeps_its_checkpoints(
        tmp_path, tiny_finetuned_dir, glue_dir, capsys, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 16\nmax_seq_length: 32\npruning: {method: "
                      "magnitude, init_sparsity: 0.5, final_sparsity: 0.5, start_epoch: 0, "
                      "end_epoch: 0, update_frequency: 1}\n")
    _nan_logits_from_call(monkeypatch, 4)
    out = tmp_path / "out"
    rc = main(["prune", "--recipe", str(recipe), "--model", str(tiny_finetuned_dir), "--task",
               "sst2", "--data-dir", str(glue_dir), "--max-train-samples", "128",
               "--save-steps", "2", "--output", str(out), "--quiet"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    assert line.startswith("obert: error: the training loss is nan at optimizer step 4"), line
    assert "(the last, checkpoint-2, from before it) are kept" in line
    assert not out.exists()
    from safetensors.torch import load_file

    kept = tmp_path / "out.checkpoints" / "checkpoint-2"
    assert (kept / "obert_complete").is_file()
    assert not non_finite(load_file(kept / "model.safetensors").items())


# -- models against their task and each other ---------------------------------------------------


def test_max_tokens_is_what_roberta_embeds():
    # RoBERTa's token i sits at position pad_token_id + 1 + i: 20 positions, pad 1 -> 18 tokens
    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=20,
                        pad_token_id=1)
    model = RobertaModel(cfg).eval()
    n = max_tokens(cfg)
    assert n == 18
    model(torch.full((1, n), 5))  # the longest sequence runs
    with pytest.raises((IndexError, RuntimeError), match="out of"):  # past the table
        model(torch.full((1, n + 1), 5))
    assert max_tokens(RobertaConfig(max_position_embeddings=20, pad_token_id=0)) == 19
    assert max_tokens(RobertaConfig(max_position_embeddings=514)) == 512  # pad 1 by default
    assert max_tokens(BertConfig(max_position_embeddings=512)) == 512


@pytest.mark.parametrize("config", [
    GPT2Config(), BertConfig(is_decoder=True), BertConfig(architectures=["BertLMHeadModel"]),
    RobertaConfig(architectures=["RobertaForCausalLM"])])
def test_decoder_only_models_are_refused(config):
    with pytest.raises(ObertError, match="decoder-only .* obert prunes bidirectional encoders"):
        check_encoder(config, "m")


@pytest.mark.parametrize("config", [BertConfig(), RobertaConfig(),
                                    BertConfig(architectures=["BertForMaskedLM"])])
def test_encoders_pass(config):
    check_encoder(config, "m")


def test_finetuning_task_spellings():
    sst2, mc = get_task("sst2"), get_task("multiple_choice")
    assert trained_on_other_task("sst-2", sst2) is None
    assert trained_on_other_task("SST2", sst2) is None
    assert trained_on_other_task(None, sst2) is None
    assert trained_on_other_task("text-classification", sst2) is None  # not a task obert knows
    assert trained_on_other_task("STS-B", sst2) == "stsb"
    assert trained_on_other_task("rte", get_task("mlm")) is None  # MLM keeps any head
    assert trained_on_other_task("commonsense_qa", mc) is None  # the generic MC task
    assert trained_on_other_task("winogrande", get_task("commonsense_qa")) == "winogrande"


@pytest.mark.parametrize(("info", "task", "expected"), [
    (HeadInfo(True, "rte", 2), "sst2", "was fine-tuned on rte"),
    (HeadInfo(False, None, 3), "sst2", "has a 3-label head, but sst2 has 2 labels"),
    (HeadInfo(True, None, 2, "multi_label_classification"), "sst2",
     "has a multi_label_classification head, but sst2 is single-label-classification"),
    (HeadInfo(True, None, 2, "single_label_classification"), "stsb", "has a 2-label head"),
    (HeadInfo(False, None, None), "sst2", "has no trained sst2 head"),
])
def test_check_head_refuses_another_tasks_head(info, task, expected):
    with pytest.raises(ObertError, match=expected):
        check_head("m", info, get_task(task))


def test_check_head_takes_the_tasks_own_head():
    check_head("m", HeadInfo(True, "sst2", 2, "single_label_classification"), get_task("sst2"))
    check_head("m", HeadInfo(True, "stsb", 1, "regression"), get_task("stsb"))
    check_head("m", HeadInfo(True, None, None), get_task("squad"))


def test_check_fits_task_reads_the_architecture():
    mnli = BertConfig(architectures=["BertForSequenceClassification"], num_labels=3,
                      finetuning_task="mnli")
    check_fits_task(mnli, "m", get_task("mnli"))
    with pytest.raises(ObertError, match="fine-tuned on mnli"):
        check_fits_task(mnli, "m", get_task("qnli"))
    with pytest.raises(ObertError, match="is a BertForSequenceClassification, which has no squad"):
        check_fits_task(mnli, "m", get_task("squad"))
    with pytest.raises(ObertError, match="is a model without a task head"):
        check_fits_task(BertConfig(), "m", get_task("sst2"))


def _tok(vocab: dict) -> SimpleNamespace:
    return SimpleNamespace(get_vocab=lambda: dict(vocab))


def test_teacher_and_student_share_one_vocabulary():
    def model(n):
        return SimpleNamespace(config=SimpleNamespace(vocab_size=n))

    words = {"[PAD]": 0, "a": 1, "b": 2}
    check_same_vocab("s", model(3), _tok(words), "t", model(3), _tok(words))
    check_same_vocab("s", model(3), _tok(words), "t", model(3), None)  # no teacher tokenizer
    with pytest.raises(ObertError, match="vocabulary of 4 tokens and the student s one of 3"):
        check_same_vocab("s", model(3), _tok(words), "t", model(4), _tok(words))
    swapped = {"[PAD]": 0, "a": 2, "b": 1}
    with pytest.raises(ObertError, match="map tokens to different ids"):
        check_same_vocab("s", model(3), _tok(words), "t", model(3), _tok(swapped))


# -- numbers -----------------------------------------------------------------------------------


def test_seed_takes_every_32_bit_value():
    args = build_parser().parse_args(["finetune", "--model", "m", "--task", "sst2", "--output",
                                      "o", "--seed", str(2**32 - 1)])
    assert args.seed == 2**32 - 1


def test_damp_floor_in_settings_and_recipes():
    from obert.pruning.config import DAMP_MIN, FisherConfig, StepConfig

    StepConfig(fisher=FisherConfig(damp=DAMP_MIN)).check()
    with pytest.raises(ObertError, match=r"--damp 1e-13 is below 1e-12"):
        StepConfig(fisher=FisherConfig(damp=1e-13)).check()
    with pytest.raises(ObertError, match=r"recipe key pruning.fisher.damp = 1e-300 is below"):
        StepConfig(fisher=FisherConfig(damp=1e-300)).check(
            lambda p: f"recipe key pruning.{p} =")


def test_a_tiny_damp_never_gives_a_non_finite_inverse():
    # Rank-deficient blocks (m = 8 < B = 50, one weight with no gradient): λ = 1e-300 is lost
    # to rounding. Before: cholesky_inverse raised (a zero pivot); now every block is retried
    # with more damping, and one that still fails is refused, never returned as inf.
    from obert.pruning.fisher import damped_inverse

    torch.manual_seed(0)
    g = torch.randn(8, 4, 50, dtype=torch.double) * 1e-3
    a = torch.einsum("mni,mnj->nij", g, g) / 8
    a[2, 9, :] = a[2, :, 9] = 0
    with pytest.raises(FloatingPointError, match="raise λ"):
        damped_inverse(a.clone(), 1e-300)
    inv, failures = damped_inverse(a.clone(), 1e-12)
    assert torch.isfinite(inv).all() and failures == []


def _pruner(numel: int, block: int):
    from obert.pruning.config import FisherConfig, StepConfig
    from obert.pruning.masks import MaskSet
    from obert.pruning.pruner import build_pruner

    lin = torch.nn.Linear(numel // 8, 8, bias=False)
    cfg = StepConfig(fisher=FisherConfig(block_size=block))
    return build_pruner(cfg, MaskSet.from_model({"lin": lin})), cfg


def test_fisher_blocks_larger_than_any_target_are_refused():
    from obert.pruning.step import fisher_memory_check

    pruner, cfg = _pruner(64, 200_000)
    with pytest.raises(ObertError, match=r"--fisher-block-size 200000 is larger than the "
                                         r"largest target tensor \(64 weights\)"):
        fisher_memory_check(pruner, cfg, print)
    pruner, cfg = _pruner(64, 64)
    fisher_memory_check(pruner, cfg, lambda _: None)  # the whole tensor in one block


def test_a_fisher_over_free_memory_is_refused(monkeypatch):
    from obert.pruning import step

    pruner, cfg = _pruner(64, 64)
    monkeypatch.setattr(step, "free_memory", lambda device: 1000)
    with pytest.raises(ObertError, match=r"more than the 1.00 KB free on cpu: lower "
                                         r"--fisher-block-size"):
        step.fisher_memory_check(pruner, cfg, print)


def test_non_finite_gradients_end_in_one_line(monkeypatch):
    import contextlib

    from obert.pruning import step

    pruner, _ = _pruner(64, 64)
    monkeypatch.setattr(step, "gradient_rounds", lambda *a, **k: contextlib.nullcontext(
        [{"lin": torch.full((8, 8), float("nan"))}]))
    with pytest.raises(ObertError, match="the empirical Fisher cannot be used: gradient 0 has "
                                         "64 non-finite entries"):
        step.estimate_fisher(pruner, None, [], 1, print)


# -- the hub ------------------------------------------------------------------------------------


def test_an_unreachable_hub_is_offline_mode_for_a_data_load(monkeypatch, capsys):
    import datasets
    from huggingface_hub import constants

    import obert.hub as hub
    from obert.data.glue import load_split

    monkeypatch.setattr(hub, "reachable", lambda endpoint: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("OBERT_GLUE_DIR", raising=False)
    with hub.dataset_access():
        assert constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert not constants.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE  # restored
    t = time.perf_counter()
    with pytest.raises(ObertError, match="could not load glue/sst2 from the Hugging Face hub"):
        load_split(get_task("sst2"), "dev")
    assert time.perf_counter() - t < 10  # no half minute of retries
    assert "Retrying" not in capsys.readouterr().err


def test_check_finite_takes_a_state_dict():
    state = {"a": torch.ones(3), "b": torch.tensor([0.0, float("inf")])}
    with pytest.raises(ObertError, match="file x has 1 non-finite value .* in b: y"):
        check_finite(state, "file x", "y")
