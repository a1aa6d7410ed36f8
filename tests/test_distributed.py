"""The Fisher sharded over ranks: 2 gloo processes (torchrun) give the masks and weights of
one process with the same total m, each rank holding half of the Fisher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from obert.cli import main
from obert.pruning.distributed import BlockShards, Comm, collective_device
from obert.pruning.fisher import fisher_memory_bytes
from obert.pruning.masks import MaskSet
from obert.pruning.pruner import MagnitudePruner, OBSPruner


def test_block_shards_tile_every_tensor_and_halve_the_fisher():
    numels = {"a": 1000, "b": 37, "c": 4 * 96}
    shards = BlockShards(numels, 16, 2)
    for name, d in numels.items():
        (a0, b0), (a1, b1) = shards.ranges[name]
        assert a0 == 0 and b0 == a1 and b1 == d and a1 % 16 == 0
    flat = {n: torch.arange(d, dtype=torch.float64) for n, d in numels.items()}
    parts = [shards.slices(flat, r) for r in range(2)]
    assert sum(p.numel() for p in parts) == sum(numels.values())
    back = shards.assemble(parts)
    assert all(torch.equal(back[n], flat[n]) for n in numels)
    # per-group values (k = 4) split at the same edges
    groups = {n: torch.arange(d // 4, dtype=torch.float64) for n, d in numels.items() if d % 4 == 0}
    g_shards = BlockShards({n: numels[n] for n in groups}, 16, 2)
    g_parts = [torch.cat([groups[n][slice(a // 4, b // 4)] for n, (a, b) in
                          ((n, g_shards.span(n, r)) for n in groups)]) for r in range(2)]
    assert all(torch.equal(g_shards.assemble(g_parts, unit=4)[n], groups[n]) for n in groups)
    # each of 2 ranks holds half of the Fisher blocks (to one block per tensor)
    weights = {"q": torch.randn(64, 32), "f": torch.randn(128, 32)}
    whole = fisher_memory_bytes([w.numel() for w in weights.values()], 50)
    for rank in range(2):
        p = OBSPruner(MaskSet(weights), block_size=50, comm=Comm(rank, 2))
        mine = [b - a for a, b in (p.shards.span(n, rank) for n in weights)]
        assert abs(fisher_memory_bytes(mine, 50) - whole / 2) <= 2 * 8 * 50 * 50
        assert p.memory_bytes() < 0.75 * OBSPruner(MaskSet(weights), block_size=50).memory_bytes()


def test_collective_device_follows_the_backend(monkeypatch):
    """NCCL takes CUDA tensors only (on this process's GPU); gloo, or a mixed backend with a
    CPU part, takes CPU tensors. No GPU is needed: the current device is stubbed."""
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collective_device("nccl") == torch.device("cuda", 3)
    assert collective_device("NCCL") == torch.device("cuda", 3)
    assert collective_device("cuda:nccl") == torch.device("cuda", 3)
    assert collective_device("gloo") == torch.device("cpu")
    assert collective_device("cpu:gloo,cuda:nccl") == torch.device("cpu")
    assert Comm().device == torch.device("cpu")  # one rank: no collective, CPU bookkeeping
    # Comm.current() reads the device off the default group's backend
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert Comm.current() == Comm(1, 2, torch.device("cuda", 3))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert Comm.current() == Comm(1, 2, torch.device("cpu"))


# Every torch.distributed function that moves tensors; a fake of each records its calls.
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_to_all",
               "all_to_all_single", "broadcast", "reduce", "reduce_scatter",
               "reduce_scatter_tensor", "gather", "scatter", "send", "recv", "isend", "irecv",
               "barrier", "broadcast_object_list", "all_gather_object", "gather_object",
               "scatter_object_list")


class _Probe(Exception):
    """Stops a collective once its tensors are recorded (meta tensors hold no values)."""


def _tensors(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list | tuple):
            out += _tensors(a)
    return out


def _fake_dist(monkeypatch, rank: int, world: int, stop: bool = False) -> list:
    """Replace torch.distributed's collectives by fakes that record (name, devices) of every
    call. They act as rank ``rank`` of a mirror world of ``world`` identical ranks (each sends
    this rank what this rank sends itself), or, with ``stop``, raise ``_Probe`` after recording."""
    import torch.distributed as dist

    calls: list[tuple[str, list[torch.device]]] = []

    def all_to_all_single(out, inp, out_splits=None, in_splits=None, *a, **k):
        mine = (inp.split(in_splits) if in_splits else inp.chunk(world))[rank]
        for piece in out.split(out_splits) if out_splits else out.chunk(world):
            piece.copy_(mine)

    def all_gather(parts, x, *a, **k):
        for p in parts:
            p.copy_(x)

    real = {"all_to_all_single": all_to_all_single, "all_gather": all_gather,
            "broadcast": lambda *a, **k: None, "barrier": lambda *a, **k: None}

    def fake(name):
        def call(*args, **kwargs):
            calls.append((name, [t.device for t in _tensors([*args, *kwargs.values()])]))
            if stop:
                raise _Probe(name)
            if name not in real:
                raise AssertionError(f"unexpected collective {name}")
            return real[name](*args, **kwargs)
        return call

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, fake(name))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: None)
    return calls


def test_every_collective_tensor_is_on_the_comm_device(monkeypatch):
    """Comm's collectives and the pruners' (gradient exchange, score and weight gathers, the
    magnitude broadcast, the agreement check) on rank 0 of a fake world of 2: every tensor
    handed to torch.distributed is on ``comm.device``, and results come back on the caller's."""
    comm = Comm(0, 2, torch.device("cpu"))
    calls = _fake_dist(monkeypatch, 0, 2)
    got = comm.exchange([torch.arange(3.0), torch.arange(2.0)])
    assert [g.tolist() for g in got] == [[0.0, 1.0, 2.0]] * 2  # both ranks sent their piece 0
    assert [g.tolist() for g in comm.gather(torch.arange(4.0))] == [[0.0, 1.0, 2.0, 3.0]] * 2
    comm.broadcast(torch.ones(3))
    comm.agree("ab" * 32, "weights")
    torch.manual_seed(0)
    # 8 and 4 Fisher blocks of 16: the two ranks' shards are the same size, as a mirror needs
    weights = {"a": torch.randn(16, 8), "b": torch.randn(8, 8)}
    pruner = OBSPruner(MaskSet(weights), block_size=16, comm=comm)
    pruner.begin()
    for i in range(3):
        pruner.add_grads(None if i == 2 else {n: torch.randn_like(w) for n, w in weights.items()})
    assert pruner.num_grads == 4  # two rounds with a gradient, from each of the 2 ranks
    pruner.step(0.5)
    assert abs(pruner.sparsity() - 0.5) < 0.02
    MagnitudePruner(MaskSet({"c": torch.randn(8, 8)}), comm).step(0.5)
    comm.finish()
    names = {n for n, _ in calls}
    assert names == {"all_to_all_single", "all_gather", "broadcast", "barrier"}
    devices = {d for _, ds in calls for d in ds}
    assert devices == {comm.device}


def test_comm_moves_tensors_to_its_device_before_each_collective(monkeypatch):
    """With ``comm.device`` another device than the caller's data (meta here, standing in for
    CUDA under NCCL), the first collective of every Comm method gets tensors on it only."""
    comm = Comm(0, 2, torch.device("meta"))
    calls = _fake_dist(monkeypatch, 0, 2, stop=True)
    for method, args in (("exchange", ([torch.ones(2), torch.ones(3)],)),
                         ("gather", (torch.ones(4),)), ("broadcast", (torch.ones(3),)),
                         ("agree", ("ab" * 32, "weights"))):
        with pytest.raises(_Probe):
            getattr(comm, method)(*args)
    assert len(calls) == 4 and all(ds and set(ds) == {torch.device("meta")} for _, ds in calls)
    pruner = OBSPruner(MaskSet({"a": torch.randn(16, 8)}), block_size=16, comm=comm)
    pruner.begin()
    with pytest.raises(_Probe):
        pruner.add_grads({"a": torch.randn(16, 8)})
    assert set(calls[-1][1]) == {torch.device("meta")}


def test_resume_knows_the_world_size_and_not_the_run_only_knobs(tmp_path):
    """run.json records the number of ranks: a 2-rank run resumed on 1 rank is refused with one
    line naming it; the Fisher's memory budget is no part of the identity; a run.json written
    before world_size was recorded (with max_memory_gb in its recipe) resumes on any world."""
    import json

    from obert.data.source import DataArgs
    from obert.errors import ObertError
    from obert.training.recipe import Recipe
    from obert.workflows.prune import PruneJob, PruneRunArgs, check_identity

    work = tmp_path / "out.checkpoints"
    data, run = DataArgs("sst2", data_dir=str(tmp_path)), PruneRunArgs()

    def recipe(memory_gb: float | None = None, num_grads: int = 1024) -> Recipe:
        r = Recipe()
        r.pruning.fisher.max_memory_gb, r.pruning.fisher.num_grads = memory_gb, num_grads
        return r

    def identity(resuming: bool, recipe: Recipe, comm: Comm) -> None:
        check_identity(PruneJob("tiny", data, recipe, str(tmp_path / "out"), run, work, comm),
                       resuming)

    identity(False, recipe(2.0), Comm(0, 2))
    recorded = json.loads((work / "run.json").read_text())
    assert recorded["world_size"] == 2
    assert "max_memory_gb" not in recorded["recipe"]["pruning"]["fisher"]
    with pytest.raises(ObertError) as e:
        identity(True, recipe(2.0), Comm(0, 1))
    assert "world_size 2 → 1" in str(e.value) and "\n" not in str(e.value)
    assert "recipe" not in str(e.value)  # only what differs is named
    identity(True, recipe(8.0), Comm(0, 2))  # budget alone
    identity(True, recipe(None), Comm(1, 2))
    with pytest.raises(ObertError, match="recipe.pruning.fisher.num_grads 1024 → 512"):
        identity(True, recipe(num_grads=512), Comm(0, 2))
    # an identity from before: no world_size, the memory budget inside the recipe
    old = {k: v for k, v in recorded.items() if k != "world_size"}
    old["recipe"]["pruning"]["fisher"]["max_memory_gb"] = 4.0
    (work / "run.json").write_text(json.dumps(old))
    identity(True, recipe(), Comm(0, 1))
    assert json.loads((work / "run.json").read_text())["world_size"] == 1


def _collectives(rank: int, port: int, out: str) -> None:
    import json

    import torch.distributed as dist

    from obert.errors import ObertError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    comm = Comm.current()
    # uneven pieces: rank r sends r + 1 + s values to rank s
    got = comm.exchange([torch.full((rank + 1 + s,), float(10 * rank + s)) for s in range(2)])
    gathered = comm.gather(torch.arange(rank + 2, dtype=torch.float64))
    comm.agree("ab" * 32, "weights")  # equal digests pass
    try:
        comm.agree(("ab" if rank == 0 else "cd") * 32, "weights")
        refused = ""
    except ObertError as e:
        refused = str(e)
    Path(out, f"{rank}.json").write_text(json.dumps({
        "got": [g.tolist() for g in got], "gathered": [g.tolist() for g in gathered],
        "refused": refused, "device": str(comm.device)}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_collectives_on_two_gloo_ranks(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_collectives, args=(port, str(tmp_path)), nprocs=2, join=True)
    r = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert r[0]["got"] == [[0.0], [10.0, 10.0]]  # from rank 0 (1 value), rank 1 (2 values)
    assert r[1]["got"] == [[1.0, 1.0], [11.0, 11.0, 11.0]]
    assert r[0]["gathered"] == r[1]["gathered"] == [[0.0, 1.0], [0.0, 1.0, 2.0]]
    assert all("ranks disagree on the weights" in x["refused"] for x in r)
    assert all(x["device"] == "cpu" for x in r)  # gloo takes CPU tensors


@pytest.fixture(scope="module")
def tiny_no_dropout(tmp_path_factory, minilm_path: Path) -> Path:
    """A tiny BERT without dropout, so that DDP training equals one process's up to rounding."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    out = tmp_path_factory.mktemp("nodrop") / "tiny"
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(out)
    return out


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OBERT_DIST_TIMEOUT_MIN": "3"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "obert", *args],
                          capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def assert_same(a_dir: Path, b_dir: Path, atol: float) -> None:
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k] == 0, b[k] == 0), f"masks differ in {k}"
        assert torch.allclose(a[k], b[k], atol=atol), k


@pytest.mark.slow
def test_oneshot_on_two_ranks_equals_one(tmp_path, tiny_no_dropout, glue_dir):
    args = ["oneshot", "--model", str(tiny_no_dropout), "--task", "sst2", "--data-dir",
            str(glue_dir), "--sparsity", "0.5", "0.8", "--num-grads", "7", "--grad-batch-size",
            "4", "--fisher-block-size", "16", "--max-train-samples", "64", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "one")]) == 0
    proc = torchrun([*args, "--output", str(tmp_path / "two")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per rank (2 ranks)" in proc.stderr
    for s in ("sparsity-0.50", "sparsity-0.80"):
        assert_same(tmp_path / "one" / s, tmp_path / "two" / s, atol=1e-6)


RECIPE = """
epochs: 2
batch_size: {batch}
max_seq_length: 64
lr: {{schedule: cyclic_linear, max: 1e-3, min: 1e-4}}
pruning: {{method: obert, init_sparsity: 0.5, final_sparsity: 0.8, start_epoch: 0.5,
          end_epoch: 1.5, update_frequency: 0.5,
          fisher: {{num_grads: 8, block_size: 16, grad_batch_size: 4}}}}
distillation: {{hardness: 0.0}}
"""


@pytest.mark.slow
def test_prune_on_two_ranks_equals_one(tmp_path, tiny_no_dropout, glue_dir):
    # One process with batch 16 against 2 ranks with 8 each: the same global batches, the
    # same total m = 8 gradients per pruning step (4 per rank), the same steps.
    for batch in (16, 8):
        (tmp_path / f"r{batch}.yaml").write_text(RECIPE.format(batch=batch))
    args = ["prune", "--model", str(tiny_no_dropout), "--task", "sst2", "--data-dir",
            str(glue_dir), "--max-train-samples", "128", "--quiet"]
    assert main([*args, "--recipe", str(tmp_path / "r16.yaml"), "--output",
                 str(tmp_path / "one")]) == 0
    proc = torchrun([*args, "--recipe", str(tmp_path / "r8.yaml"), "--output",
                     str(tmp_path / "two")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(tmp_path / "one", tmp_path / "two", atol=1e-5)
    import json

    info = json.loads((tmp_path / "two" / "sparsity.json").read_text())
    assert info["settings"]["world_size"] == 2
    assert [h["step"] for h in info["pruning_steps"]] == [4, 8, 12]


@pytest.mark.slow
def test_mlm_oneshot_on_two_ranks_equals_one(tmp_path, minilm_path, shared_data):
    """oBERT on the MLM loss under torchrun: each rank draws the same masked batches as one
    process would (seeded collator), so the masks and weights match one process."""
    import json

    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    model = tmp_path / "tiny-mlm"
    BertForMaskedLM(config).save_pretrained(model)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(model)
    squad = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text())["data"]
    text = [" ".join(p["context"].split()) for p in squad[0]["paragraphs"][:30]]
    (tmp_path / "corpus.txt").write_text("\n".join(text) + "\n")
    args = ["oneshot", "--model", str(model), "--task", "mlm", "--train-file",
            str(tmp_path / "corpus.txt"), "--max-seq-length", "32", "--sparsity", "0.6",
            "--num-grads", "7", "--grad-batch-size", "4", "--fisher-block-size", "16", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "one")]) == 0
    proc = torchrun([*args, "--output", str(tmp_path / "two")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(tmp_path / "one", tmp_path / "two", atol=1e-6)
