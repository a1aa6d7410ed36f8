"""Masked-language modelling: corpus reading, grouping, BERT's masking, KD on masked logits,
MLM oneshot and gradual pruning to the exact sparsity, head fitting, and sparse transfer from
an MLM-pruned model to a task with its zeros held."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from obert.cli import main
from obert.data.mlm import (
    MASK_REPLACE,
    MLM_PROBABILITY,
    RANDOM_REPLACE,
    group_texts,
    masking_collator,
    read_text_file,
)
from obert.training.distill import kd_loss, token_kd_loss


@pytest.fixture(scope="module")
def tokenizer(minilm_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data: Path) -> Path:
    """SQuAD dev paragraphs as text: 60 for training (.txt), 20 for validation (.jsonl)."""
    squad = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text())["data"]
    paras = [" ".join(p["context"].split()) for a in squad for p in a["paragraphs"]]
    out = tmp_path_factory.mktemp("corpus")
    (out / "train.txt").write_text("\n".join(paras[:60]) + "\n")
    (out / "dev.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in paras[60:80]))
    return out


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, minilm_path: Path) -> Path:
    """A random 2-layer BertForMaskedLM (its MLM head saved, so it counts as trained)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny-mlm") / "model"
    BertForMaskedLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


def _data(corpus: Path) -> list[str]:
    return ["--task", "mlm", "--train-file", str(corpus / "train.txt"), "--validation-file",
            str(corpus / "dev.jsonl"), "--max-seq-length", "32", "--quiet"]


def _targets(folder: Path) -> dict[str, torch.Tensor]:
    w = load_file(folder / "model.safetensors")
    return {k: v for k, v in w.items() if ".layer." in k and k.endswith("weight") and v.dim() == 2}


# -- data ----------------------------------------------------------------------------------------


def test_read_text_file_formats(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first doc\n\n  \nsecond doc\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one", "id": 1}\n\n{"text": "two"}\n')
    assert read_text_file(tmp_path / "a.txt")["text"] == ["first doc", "second doc"]
    assert read_text_file(tmp_path / "b.jsonl")["text"] == ["one", "two"]


def test_group_texts_concatenates_and_cuts(tokenizer) -> None:
    import datasets

    docs = ["The quick brown fox jumps over the lazy dog.", "A second, longer document "
            "about pruning language models with second-order information.", "Third."]
    blocks = group_texts(datasets.Dataset.from_dict({"text": docs}), tokenizer, 8)
    joined = [t for d in docs for t in tokenizer(d)["input_ids"]]
    assert len(blocks) == len(joined) // 8
    assert [t for b in blocks["input_ids"] for t in b] == joined[: len(blocks) * 8]
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id}
    flat_mask = [m for b in blocks["special_tokens_mask"] for m in b]
    assert all((t in special) == bool(m) for t, m in zip(joined, flat_mask, strict=False))


def test_masking_collator_80_10_10_within_binomial_bounds(tokenizer, corpus: Path) -> None:
    """Counts of masked, [MASK]ed, randomised and kept tokens over ~60k tokens, each within
    5 standard deviations of its binomial mean; special tokens are never chosen."""
    blocks = group_texts(read_text_file(corpus / "train.txt"), tokenizer, 32)
    rows = [blocks[i] for i in range(len(blocks))]
    collate = masking_collator(tokenizer, seed=0)
    originals = torch.tensor(blocks["input_ids"])
    special = torch.tensor(blocks["special_tokens_mask"]).bool()
    batch = collate(rows)
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], originals[chosen])
    assert not (chosen & special).any()
    n = int((~special).sum())
    k = int(chosen.sum())
    within = lambda count, total, p: abs(count - total * p) <= 5 * math.sqrt(total * p * (1 - p))  # noqa: E731
    assert within(k, n, MLM_PROBABILITY), (k, n)
    got = batch["input_ids"][chosen]
    masked = int((got == tokenizer.mask_token_id).sum())
    kept = int((got == originals[chosen]).sum())
    random_ = k - masked - kept
    assert within(masked, k, MASK_REPLACE), (masked, k)
    # a random token equal to the original counts as kept: 1 in 30,522, well inside the bound
    assert within(random_, k, RANDOM_REPLACE), (random_, k)
    assert within(kept, k, 1 - MASK_REPLACE - RANDOM_REPLACE), (kept, k)
    # a seeded collator draws the same masks again
    again = masking_collator(tokenizer, seed=0)(rows)
    assert torch.equal(again["labels"], batch["labels"])


def test_a_batch_always_has_a_masked_token(tokenizer) -> None:
    """Short rows and a masking probability of 1e-6: nearly every draw masks nothing, yet each
    batch gets a label on a non-special token and a finite loss (not the NaN mean over zero
    labels), the same for the same seed; a batch of special tokens only is refused."""
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

    from obert.errors import ObertError

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64,
                                       max_position_embeddings=128)).eval()
    rows = [tokenizer(t, return_special_tokens_mask=True) for t in ("a", "be it", "no", "so")]
    picked = set()
    for seed in range(12):
        batch = masking_collator(tokenizer, seed=seed, mlm_probability=1e-6)(rows)
        chosen = batch["labels"] != -100
        assert chosen.any()
        special = torch.tensor(tokenizer.pad(rows)["special_tokens_mask"]).bool()
        assert not (chosen & special).any()
        assert (batch["input_ids"][chosen] == tokenizer.mask_token_id).all()
        with torch.no_grad():
            assert torch.isfinite(model(**batch).loss)
        again = masking_collator(tokenizer, seed=seed, mlm_probability=1e-6)(rows)
        assert torch.equal(again["labels"], batch["labels"])
        picked.add(tuple(chosen.nonzero().reshape(-1).tolist()))
    assert len(picked) > 1  # the forced token is drawn, not always the first one
    # a batch without masks, as Hugging Face's collator gives it: all labels -100, a NaN loss
    plain = DataCollatorForLanguageModeling(tokenizer, mlm_probability=1e-6, seed=0)(rows)
    assert (plain["labels"] == -100).all() and torch.isnan(model(**plain).loss)
    # unseeded (the Trainer's collator): still at least one label per batch
    for _ in range(5):
        assert (masking_collator(tokenizer, mlm_probability=1e-6)(rows)["labels"] != -100).any()
    only_special = [{"input_ids": [tokenizer.cls_token_id, tokenizer.sep_token_id],
                     "special_tokens_mask": [1, 1]}]
    with pytest.raises(ObertError, match="only special tokens"):
        masking_collator(tokenizer, seed=0, mlm_probability=1e-6)(only_special)


def test_masking_collator_is_hugging_face_s_when_something_is_masked(tokenizer) -> None:
    """A batch whose first draw masks a token is exactly DataCollatorForLanguageModeling's."""
    from transformers import DataCollatorForLanguageModeling

    rows = [tokenizer(t, return_special_tokens_mask=True) for t in
            ("The quick brown fox jumps over the lazy dog.", "Pruning with second-order "
             "information keeps the accuracy of large language models.")]
    ours = masking_collator(tokenizer, seed=3)(rows)
    theirs = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=MLM_PROBABILITY, mask_replace_prob=MASK_REPLACE,
        random_replace_prob=RANDOM_REPLACE, seed=3)(rows)
    assert (ours["labels"] != -100).any()
    assert all(torch.equal(ours[k], theirs[k]) for k in ("input_ids", "labels"))


# -- KD on MLM logits ------------------------------------------------------------------------------


def test_token_kd_is_the_formula_over_masked_positions() -> None:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)) averaged over the masked positions only."""
    T = 5.5
    s = torch.tensor([[[1.0, 2.0, 0.5], [9.0, 9.0, 9.0], [0.0, -1.0, 3.0]]])
    t = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 50.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[2, -100, 0]])  # the middle position is not masked: it must not count
    by_hand = 0.0
    for i in (0, 2):
        p_t = torch.softmax(t[0, i] / T, -1)
        log_p_s = torch.log_softmax(s[0, i] / T, -1)
        by_hand += float((p_t * (p_t.log() - log_p_s)).sum()) * T * T
    got = token_kd_loss(s, t, labels, 1.0, T, None)
    assert got.item() == pytest.approx(by_hand / 2, rel=1e-6)
    assert got.item() == pytest.approx(kd_loss(s[0, [0, 2]], t[0, [0, 2]], T).item(), rel=1e-6)
    task = torch.tensor(0.75)
    mixed = token_kd_loss(s, t, labels, 0.4, T, task)
    assert mixed.item() == pytest.approx(0.4 * by_hand / 2 + 0.6 * 0.75, rel=1e-6)


# -- commands --------------------------------------------------------------------------------------


def test_mlm_oneshot_reaches_exact_sparsity(tiny_mlm: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "oneshot"
    assert main(["oneshot", "--model", str(tiny_mlm), *_data(corpus), "--sparsity", "0.5",
                 "0.8", "--num-grads", "8", "--grad-batch-size", "4", "--evaluate",
                 "--output", str(out)]) == 0
    for s in (0.5, 0.8):
        folder = out / f"sparsity-{s:.2f}"
        w = _targets(folder)
        zeros = sum(int((v == 0).sum()) for v in w.values())
        assert zeros == round(s * sum(v.numel() for v in w.values()))
        res = json.loads((folder / "eval_results.json").read_text())
        assert res["task"] == "mlm" and res["masked_tokens"] > 0
        assert res["perplexity"] == pytest.approx(math.exp(res["loss"]))
        head = load_file(folder / "model.safetensors")["cls.predictions.transform.dense.weight"]
        assert (head != 0).all()  # the head stays dense


def test_mlm_gradual_prune_then_sparse_transfer(tiny_mlm: Path, corpus: Path, tmp_path: Path,
                                                glue_dir: Path, tiny_finetuned_dir: Path) -> None:
    """Upstream: a short gradual oBERT run with KD from the start model reaches 60% exactly
    and scores MLM metrics. Transfer: finetune --keep-sparsity on SST-2 keeps every zero at 0,
    moves the rest, and records where the masks came from."""
    recipe = tmp_path / "up.yaml"
    recipe.write_text("""epochs: 2
batch_size: 8
max_seq_length: 32
lr: {schedule: cyclic_linear, max: 1.0e-3, min: 1.0e-5}
pruning: {method: obert, init_sparsity: 0.4, final_sparsity: 0.6, start_epoch: 0,
          end_epoch: 1, update_frequency: 0.5,
          fisher: {num_grads: 8, block_size: 16, grad_batch_size: 4}}
distillation: {hardness: 1.0, temperature: 5.5}
""")
    up = tmp_path / "up"
    assert main(["prune", "--recipe", str(recipe), "--model", str(tiny_mlm), *_data(corpus),
                 "--max-train-samples", "20", "--output", str(up)]) == 0
    info = json.loads((up / "sparsity.json").read_text())
    n = sum(v.numel() for v in _targets(up).values())
    assert info["global_sparsity"] * n == round(0.6 * n)
    assert info["settings"]["teacher"] == str(tiny_mlm)  # the MLM start model distils
    res = json.loads((up / "eval_results.json").read_text())
    assert {"accuracy", "perplexity", "loss"} <= set(res)
    logged = [json.loads(x) for x in (up / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in logged if "eval_perplexity" in r]
    assert evals and len(evals) == len(set(evals))  # one dev pass per step, epoch ends too

    before = _targets(up)
    out = tmp_path / "transfer"
    assert main(["finetune", "--model", str(up), "--task", "sst2", "--data-dir", str(glue_dir),
                 "--max-train-samples", "64", "--epochs", "1", "--lr", "1e-3",
                 "--keep-sparsity", "--output", str(out), "--quiet"]) == 0
    after = _targets(out)
    pruned = moved = 0
    for name, w in before.items():
        zero = w == 0
        assert (after[name][zero] == 0).all(), name
        pruned += int(zero.sum())
        moved += int((after[name][~zero] != w[~zero]).sum())
    assert pruned == round(0.6 * sum(v.numel() for v in before.values()))
    assert moved > 0.9 * sum(int((w != 0).sum()) for w in before.values())
    masks = json.loads((out / "sparsity.json").read_text())["masks"]
    assert masks["origin"] == str(up) and masks["upstream"]["method"] == "gradual-obert"


def test_head_only_fits_the_head_and_leaves_the_encoder(tiny_model_dir: Path, corpus: Path,
                                                       tmp_path: Path) -> None:
    """A checkpoint without an MLM head gets one fitted on its frozen encoder; the saved model
    then loads as trained for MLM (oneshot oBERT accepts it)."""
    out = tmp_path / "head"
    assert main(["finetune", "--model", str(tiny_model_dir), *_data(corpus), "--head-only",
                 "--epochs", "1", "--lr", "1e-3", "--output", str(out)]) == 0
    start, fitted = load_file(tiny_model_dir / "model.safetensors"), load_file(
        out / "model.safetensors")
    encoder = [k for k in start if k.startswith("bert.") and "pooler" not in k]
    assert encoder and all(torch.equal(start[k], fitted[k]) for k in encoder)
    assert "cls.predictions.transform.dense.weight" in fitted
    assert json.loads((out / "sparsity.json").read_text())["method"] == "head-only"
    assert main(["oneshot", "--model", str(out), *_data(corpus), "--sparsity", "0.5",
                 "--num-grads", "4", "--grad-batch-size", "2", "--output",
                 str(tmp_path / "pruned")]) == 0


def test_evaluate_mlm_scores_the_same_masks(tiny_mlm: Path, corpus: Path) -> None:
    """Two evaluations of one model, at different batch sizes, score the same masked tokens
    (fixed masks), so models compare fairly."""
    from obert.data.tasks import get_task
    from obert.models import load_classifier, load_tokenizer
    from obert.training.evaluate import evaluate_mlm

    tok = load_tokenizer(str(tiny_mlm))
    model = load_classifier(str(tiny_mlm), get_task("mlm"))
    blocks = group_texts(read_text_file(corpus / "dev.jsonl"), tok, 32)
    a = evaluate_mlm(model, blocks, tok, 16, quiet=True)
    b = evaluate_mlm(model, blocks, tok, 7, quiet=True)
    assert a["masked_tokens"] == b["masked_tokens"] > 0
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert 0 <= a["accuracy"] <= 1 and a["loss"] > math.log(30522) - 2  # random model


def test_hub_corpus_path_on_a_local_dataset_folder(tmp_path: Path) -> None:
    """``--dataset`` goes through ``datasets.load_dataset`` (the hub code path): a folder with a
    train split and no validation split gives its last 5% as dev; ``--streaming`` keeps only
    the first N documents and the next N·5/95 as dev."""
    from obert.data.mlm import load_corpus

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(
        json.dumps({"text": f"document {i}", "id": i}) + "\n" for i in range(200)))
    train, dev = load_corpus("train", dataset=str(folder)), load_corpus("dev", dataset=str(folder))
    assert train["text"] == [f"document {i}" for i in range(190)]
    assert dev["text"] == [f"document {i}" for i in range(190, 200)]
    s_train = load_corpus("train", dataset=str(folder), streaming=True, max_samples=38)
    s_dev = load_corpus("dev", dataset=str(folder), streaming=True, max_samples=38)
    assert s_train["text"] == [f"document {i}" for i in range(38)]
    assert s_dev["text"] == ["document 38", "document 39"]
