"""Pruners on real module weights: targets, exact sparsity, masks that stay exact."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from obert.errors import ObertError
from obert.pruning.config import FisherConfig, StepConfig, TargetsConfig
from obert.pruning.masks import MaskSet
from obert.pruning.pruner import MagnitudePruner, OBSPruner, sparsity_schedule
from obert.pruning.select import select_prune
from obert.pruning.step import pruning_step
from obert.pruning.targets import find_targets, role_of
from obert.workflows.oneshot import target_masks


def tiny_bert(layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=36, max_position_embeddings=32)
    return BertForSequenceClassification(cfg)


def fake_batches(n: int = 6, bs: int = 4, seq: int = 10):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 100, (bs, seq), generator=g),
             "attention_mask": torch.ones(bs, seq, dtype=torch.long),
             "labels": torch.randint(0, 2, (bs,), generator=g)} for _ in range(n)]


def test_targets_are_the_six_encoder_linears_per_layer():
    model = tiny_bert(3)
    t = find_targets(model)
    assert len(t) == 18
    assert {role_of(n) for n in t} == {"query", "key", "value", "attn_output", "intermediate", "output"}
    assert not any("classifier" in n or "pooler" in n or "embeddings" in n for n in t)
    with_head = find_targets(model, include=["classifier", "pooler"])
    assert "classifier" in with_head and "bert.pooler.dense" in with_head
    assert len(find_targets(model, exclude=[r"query|key"])) == 12
    with pytest.raises(ObertError, match="no prunable layers"):
        find_targets(model, exclude=["."])
    with pytest.raises(ObertError, match="no prunable layers"):
        find_targets(nn.Sequential(nn.Linear(4, 4)))


def test_targets_by_role_in_other_architectures():
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    small = dict(vocab_size=100, max_position_embeddings=40)
    distil = DistilBertForSequenceClassification(
        DistilBertConfig(dim=16, hidden_dim=32, n_layers=2, n_heads=2, **small))
    t = find_targets(distil)
    assert len(t) == 12 and {role_of(n) for n in t} >= {"query", "intermediate", "output"}
    assert not any(n.startswith(("pre_classifier", "classifier")) for n in t)
    roberta = RobertaForSequenceClassification(
        RobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, **small))
    t = find_targets(roberta)
    assert len(t) == 12 and not any("classifier" in n for n in t)


def random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"a": torch.randn(13, 20), "b": torch.randn(7, 36), "c": torch.randn(5, 8)}


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_sparsity_hits_target_within_one_group(k, scope, sparsity):
    ws = random_weights()
    p = MagnitudePruner(MaskSet(ws, k))
    p.step(sparsity, scope)
    total = sum(w.numel() for w in ws.values())
    zeros = sum(int((w == 0).sum()) for w in ws.values())
    if scope == "global":
        assert abs(zeros - sparsity * total) <= k / 2 + 1e-9 * total
    else:
        for w in ws.values():
            assert abs(int((w == 0).sum()) - sparsity * w.numel()) <= k / 2 + 1e-9 * w.numel()
    if k == 4:  # whole groups of 4 along the input dimension
        for w in ws.values():
            g = (w.reshape(-1, 4) == 0).sum(-1)
            assert set(g.tolist()) <= {0, 4}


def test_global_magnitude_is_one_threshold():
    ws = random_weights(1)
    orig = {n: w.clone() for n, w in ws.items()}
    MagnitudePruner(MaskSet(ws)).step(0.6)
    pruned = torch.cat([orig[n][ws[n] == 0].abs() for n in ws])
    kept = torch.cat([orig[n][ws[n] != 0].abs() for n in ws])
    assert pruned.max() <= kept.min()


@pytest.mark.parametrize("k", [1, 4])
def test_obs_masks_stay_exact_and_monotone(k):
    ws = random_weights(2)
    p = OBSPruner(MaskSet(ws, k), block_size=8, damp=1e-2)
    previous = None
    for s in (0.3, 0.6, 0.8):
        p.begin()
        for i in range(12):
            torch.manual_seed(100 + i)
            p.add_grads({n: torch.randn_like(w) for n, w in ws.items()})
        p.step(s)
        masks = p.masks.masks
        for n, w in ws.items():
            assert torch.equal(w == 0, ~masks[n])  # pruned exactly 0, kept not
            if previous is not None:
                assert not (masks[n] & ~previous[n]).any()  # nothing revives
        previous = {n: m.clone() for n, m in masks.items()}
    assert p.sparsity() == pytest.approx(0.8, abs=k / sum(w.numel() for w in ws.values()))


def test_obs_beats_magnitude_on_a_quadratic_problem():
    # Least squares: the empirical Fisher of per-sample gradients is the Hessian up to a scale,
    # so OBS's one-shot loss must be lower than magnitude's. Inputs on different scales (which
    # fools |w|), mildly correlated (strong correlation breaks the paper's cross-term-free sum).
    torch.manual_seed(0)
    x = torch.randn(512, 40) * torch.logspace(-1, 0.5, 40)
    x = x + 0.2 * x[:, torch.randperm(40)]
    w_true = torch.randn(1, 40)
    y = x @ w_true.T + 0.5 * torch.randn(512, 1)
    w_opt = torch.linalg.lstsq(x, y).solution.T

    def loss(w):
        return float(((x @ w.T - y) ** 2).mean() / 2)

    res = {}
    for method in ("magnitude", "obert"):
        w = {"w": w_opt.clone()}
        m = MaskSet(w)
        p = MagnitudePruner(m) if method == "magnitude" else OBSPruner(m, block_size=40, damp=1e-6)
        if method == "obert":
            p.begin()
            for i in range(512):
                p.add_grads({"w": (x[i : i + 1] @ w_opt.T - y[i]) * x[i : i + 1]})
        p.step(0.5)
        res[method] = loss(w["w"])
    assert res["obert"] < 0.5 * res["magnitude"]


def oneshot(model, cfg: StepConfig, sparsity: float, batches=None, log=None) -> MaskSet:
    masks = target_masks(model, cfg, TargetsConfig(), "fix")
    pruning_step(model, masks, cfg, sparsity, batches if batches is not None else fake_batches(),
                 log=log or (lambda _: None), quiet=True)
    return masks


def test_oneshot_on_tiny_bert_with_recomputations():
    model = tiny_bert()
    emb, head = model.bert.embeddings.word_embeddings.weight.clone(), model.classifier.weight.clone()
    cfg = StepConfig(recomputations=3, fisher=FisherConfig(num_grads=6, grad_batch_size=4,
                                                           block_size=16, damp=1e-4))
    logs: list[str] = []
    masks = oneshot(model, cfg, 0.75, log=logs.append)
    targets = find_targets(model)
    total = sum(m.weight.numel() for m in targets.values())
    zeros = sum(int((m.weight == 0).sum()) for m in targets.values())
    assert abs(zeros - 0.75 * total) <= 0.5
    steps = [line for line in logs if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == ["step 1/3", "step 2/3", "step 3/3"]
    assert "sparsity 0.2500" in steps[0] and "sparsity 0.5000" in steps[1]
    for name, mod in targets.items():
        assert torch.equal(mod.weight == 0, ~masks.masks[name])
    # the untouched parts of the model are dense
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, emb)
    assert torch.equal(model.classifier.weight, head)


def test_oneshot_block4_and_memory_guard():
    model = tiny_bert()
    cfg = StepConfig(mask="block4", fisher=FisherConfig(num_grads=4, grad_batch_size=4, damp=1e-4))
    assert cfg.block_size == 32  # the paper's B for 4-blocks, without asking
    oneshot(model, cfg, 0.5)
    for mod in find_targets(model).values():
        g = (mod.weight.reshape(-1, 4) == 0).sum(-1)
        assert set(g.tolist()) <= {0, 4}
    bad = StepConfig(fisher=FisherConfig(max_memory_gb=1e-6, block_size=16))
    with pytest.raises(ObertError, match="over --max-fisher-memory"):
        oneshot(tiny_bert(), bad, 0.5)
    # magnitude reads no Fisher: a block size that block4 could not use is no obstacle
    StepConfig(method="magnitude", mask="block4", fisher=FisherConfig(block_size=50)).check()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"mask": "block4", "fisher": FisherConfig(block_size=50)}, "--fisher-block-size 50"),
     ({"method": "random"}, "--method 'random' is not one of"),
     ({"scope": "row"}, "not one of"),
     ({"recomputations": 0}, "--recomputations 0"),
     ({"fisher": FisherConfig(damp=0.0)}, "positive"),
     ({"fisher": FisherConfig(grad_batch_size=0)}, "--grad-batch-size 0")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ObertError, match=match):
        StepConfig(**kwargs).check()


def test_select_never_revives_and_schedule_is_linear():
    scores = {"a": torch.tensor([float("-inf"), float("-inf"), 1.0, 2.0])}
    assert select_prune(scores, 0.25)["a"].tolist() == [True, True, False, False]
    assert sparsity_schedule(0.2, 0.8, 3) == pytest.approx([0.4, 0.6, 0.8])
