"""``obert oneshot``: prune a model once, to one or several sparsities, from one Fisher."""

from __future__ import annotations

import json
import time
from pathlib import Path

from obert.data.glue import subsample
from obert.data.source import DataArgs
from obert.data.tokenize import batches, encode
from obert.io import atomic_output, mark_output, save_model
from obert.models import check_head, has_cuda, load_classifier, load_tokenizer
from obert.pruning.config import StepConfig, TargetsConfig, check_sparsity
from obert.pruning.distributed import Comm, init_from_env
from obert.pruning.masks import MaskSet
from obert.pruning.pruner import build_pruner
from obert.pruning.step import fisher_memory_check, prune_each
from obert.pruning.targets import check_group_shape, find_targets
from obert.sparsity import sparsity_report
from obert.workflows.common import check_inputs, input_paths, log, maybe_evaluate, provenance


def sparsity_folder(s: float) -> str:
    """The sub-folder of one sparsity when ``--sparsity`` lists several: ``sparsity-0.70``."""
    return f"sparsity-{s:.2f}"


def target_masks(model, cfg: StepConfig, targets: TargetsConfig, fix: str) -> MaskSet:
    """The model's targets under a ``MaskSet`` in the config's groups (zeros stay pruned)."""
    found = find_targets(model, targets.include, targets.exclude, targets.embeddings,
                         targets.head)
    check_group_shape(found, cfg.k, fix)
    return MaskSet.from_model(found, cfg.k)


def run_oneshot(model_name: str, data: DataArgs, cfg: StepConfig, sparsities: list[float],
                output: str, targets: TargetsConfig | None = None, max_seq_length: int = 128,
                do_eval: bool = False, overwrite: bool = False, quiet: bool = False) -> list[dict]:
    """Prune ``model_name`` to each sparsity; one sparsity writes ``output`` itself, several
    write ``output/sparsity-S/`` each (see ``prune_each``). Returns one summary per sparsity."""
    targets = targets or TargetsConfig()
    # 1. inputs, before any work
    cfg.check()
    targets.check()
    sparsities = sorted({check_sparsity(s) for s in sparsities})
    check_inputs(model_name, data, max_seq_length, output, overwrite)
    if do_eval:
        data.load("dev")  # --evaluate needs a dev split: refuse now, not after pruning
    comm = init_from_env(has_cuda())
    # 2. the model, its targets, the Fisher's memory (refused before any data is read)
    tokenizer = load_tokenizer(model_name)
    model, head = load_classifier(model_name, data.spec, with_info=True)
    if cfg.needs_grads:  # the Fisher is the task loss's: a made-up head makes it noise
        check_head(model_name, head, data.spec)
    if has_cuda():
        model.cuda()
    masks = target_masks(model, cfg, targets, "use --mask unstructured or --exclude it")
    fisher_memory_check(build_pruner(cfg, masks, comm), cfg, lambda _: None)
    # 3. gradient batches: only m·batch·r rows are ever drawn, so tokenize that many
    loader = None
    if cfg.needs_grads:
        need = cfg.fisher.num_grads * cfg.fisher.grad_batch_size * cfg.recomputations
        train = subsample(data.load("train"), need, data.seed)
        train = encode(train, tokenizer, data.spec, max_seq_length, data.doc_stride)
        loader = batches(train, tokenizer, cfg.fisher.grad_batch_size, data.seed, data.spec)
    # 4. prune to each sparsity, writing each as it is done (rank 0 writes)
    results: list[dict] = []
    t0 = time.time()
    writer = atomic_output(output, overwrite, log, "oneshot", input_paths(model_name, data))
    with writer if comm.is_main else _nowhere() as tmp:
        def done(s: float) -> None:
            wall = time.time() - t0
            folder = None if tmp is None else tmp / sparsity_folder(s) if len(sparsities) > 1 else tmp
            results.append(_finish(model, tokenizer, model_name, data, cfg, s, masks, folder,
                                   max_seq_length, do_eval, quiet, comm, wall))

        prune_each(model, masks, cfg, sparsities, loader, done, comm, log, quiet)
        if comm.is_main and len(sparsities) > 1:
            (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    comm.finish()
    return results


def _finish(model, tokenizer, model_name: str, data: DataArgs, cfg: StepConfig, s: float,
            masks: MaskSet, folder: Path | None, max_seq_length: int, do_eval: bool,
            quiet: bool, comm: Comm, wall: float) -> dict:
    """Score (if asked) and write the model as pruned to ``s``; rank 0 only."""
    if not comm.is_main:
        return {}
    modules = {n: model.get_submodule(n) for n in masks.weights}
    report = sparsity_report(modules)
    log(f"sparsity {s:.2f}: global sparsity {report['global_sparsity']:.4f} over "
        f"{report['num_weights']:,} weights ({wall:.1f}s since the start)")
    metrics = maybe_evaluate(model, tokenizer, data, max_seq_length, quiet) if do_eval else {}
    info = {**report, "method": cfg.method,
            "settings": {**cfg.to_dict(), "sparsity": s, "fisher_block_size": cfg.block_size,
                         "max_seq_length": max_seq_length, "world_size": comm.world},
            "wall_s": wall, **provenance(model_name, data)}
    folder.mkdir(exist_ok=True)
    mark_output(folder, "oneshot")  # a sub-folder is an output of its own too
    save_model(model, tokenizer, folder, info, metrics)
    if metrics:
        (folder / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"sparsity": s, "global_sparsity": report["global_sparsity"], **metrics,
            "wall_s": wall}


class _nowhere:
    """The output context of ranks that do not write."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> bool:
        return False
