"""What the CLI's jobs share (input checks, the output writer, dev scoring) and the small
jobs: fine-tune and evaluate. Where data comes from is ``obert.data.source.DataArgs``; the
model on obert's kernels, ``obert.runtime.engine``. Each reads its inputs, checks them before any long work, and
writes its output folder atomically."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import datasets

from obert import __version__
from obert.data.source import DataArgs
from obert.data.tokenize import encode
from obert.errors import ObertError
from obert.io import atomic_output, check_output, save_model
from obert.models import (
    check_encoder,
    check_head,
    check_head_class,
    check_seq_len,
    load_classifier,
    load_config,
    load_tokenizer,
)
from obert.pruning.targets import find_targets
from obert.runtime.engine import compile_for
from obert.sparsity import sparsity_report
from obert.training.evaluate import evaluate_split
from obert.training.finetune import FinetuneConfig, finetune, freeze_base


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# where each task family's data comes from when --data-dir is not given
DATA_DIR_ENVS = ("OBERT_GLUE_DIR", "OBERT_SQUAD_DIR", "OBERT_MC_DIR")


def input_paths(model_name: str | None, data: DataArgs | None = None,
                *more: str | os.PathLike | None) -> list[str | os.PathLike]:
    """The run's inputs that may be local paths (model, data, ``more``: teacher, recipe), for
    ``check_output``: an output never is, or holds, one of them."""
    found = [model_name, *more]
    if data is not None:
        found += [data.data_dir, data.train_file, data.validation_file]
        if data.data_dir is None:
            found += [os.environ.get(k) for k in DATA_DIR_ENVS]
    return [p for p in found if p]


def check_inputs(model_name: str, data: DataArgs, max_seq_length: int,
                 output: str | None = None, overwrite: bool = False,
                 inputs: list | None = None):
    """What can be checked before any work: the output location (never one of ``inputs``,
    by default the model and data), the model's config (a local folder or a reachable id), the
    sequence length against its positions, an MLM head class for the mlm task, and SQuAD's
    window arithmetic. Returns the config."""
    if output is not None:
        check_output(output, overwrite,
                     inputs=input_paths(model_name, data) if inputs is None else inputs)
    config = load_config(model_name)
    check_seq_len(config, max_seq_length)
    check_head_class(config, model_name, data.spec)
    check_encoder(config, model_name)
    if data.spec.is_qa:
        from obert.data.qa import check_windows

        check_windows(max_seq_length, data.doc_stride)
    data.check()  # every row of every file named (a bad dev file too): not after training
    return config


def set_quiet(quiet: bool) -> None:
    """No progress bars from datasets, transformers (incl. "Writing model shards") or the hub."""
    if quiet:
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
        disable_progress_bars()


def run_finetune(model_name: str, data: DataArgs, cfg: FinetuneConfig, output: str,
                 overwrite: bool = False, quiet: bool = False,
                 keep_sparsity: bool = False, head_only: bool = False) -> dict:
    """Fine-tune ``model_name`` on the task; with ``keep_sparsity`` its zeros are fixed masks
    (sparse transfer) and ``sparsity.json`` records where they came from; with ``head_only``
    the encoder is frozen and only the task head trains (e.g. fitting an MLM head that a
    checkpoint lacks)."""
    task = data.spec
    if keep_sparsity and head_only:
        raise ObertError("--keep-sparsity and --head-only do not go together: a frozen encoder "
                         "keeps its zeros anyway; drop --keep-sparsity")
    check_inputs(model_name, data, cfg.max_seq_length, output, overwrite)
    train = data.load("train")
    tokenizer = load_tokenizer(model_name)
    model, head = load_classifier(model_name, task, with_info=True)
    if task.is_mlm and not head_only:  # a random MLM head would wreck the encoder it trains
        check_head(model_name, head, task)
    masks, origin = (transfer_masks(model, model_name) if keep_sparsity else (None, None))
    trainable = freeze_base(model) if head_only else None
    t0 = time.time()
    encoded = encode(train, tokenizer, task, cfg.max_seq_length, data.doc_stride)
    log(f"fine-tuning {model_name} on {task.name}: {len(train):,} training "
        f"{'documents' if task.is_mlm else 'rows'}"
        + (f" ({len(encoded):,} blocks of {cfg.max_seq_length} tokens)" if task.is_mlm else "")
        + (f", keeping its {masks.sparsity():.2%} sparsity" if masks else "")
        + (f", the head only ({trainable:,} weights; the encoder frozen)" if head_only else ""))
    summary = finetune(model, tokenizer, encoded, cfg, quiet, masks, task)
    summary["wall_s"] = time.time() - t0
    metrics = maybe_evaluate(model, tokenizer, data, cfg.max_seq_length, quiet)
    for p in model.parameters():  # the saved model trains whole when loaded again
        p.requires_grad_(True)
    method = "head-only" if head_only else "sparse-transfer" if masks else "dense-finetune"
    counted = ({n: model.get_submodule(n) for n in masks.weights} if masks
               else targets_or_none(model))
    info = {**sparsity_report(counted), "method": method,
            "settings": {**cfg.to_dict(), "keep_sparsity": keep_sparsity,
                         "head_only": head_only}, "train": summary,
            **({"masks": origin} if origin else {})}
    write_output(output, overwrite, model, tokenizer, model_name, data, info, metrics,
                 command="finetune")
    return metrics


def transfer_masks(model, model_name: str):
    """The exact zeros of the model's targets as fixed masks, and their origin for
    ``sparsity.json`` (the upstream model, its sparsity, and how it was pruned if it says)."""
    from obert.pruning.masks import MaskSet
    from obert.pruning.targets import find_targets, is_encoder_linear

    # the encoder's Linears, and the embedding tables and head Linears that the run which
    # made the model pruned (its sparsity.json lists them)
    pruned = pruned_tensors(model_name)
    targets = {n: m for n, m in find_targets(model, embeddings=True, head=True).items()
               if is_encoder_linear(n, m) or f"{n}.weight" in pruned}
    masks = MaskSet.from_model(targets)
    if masks.sparsity() == 0:
        raise ObertError(f"--keep-sparsity: {model_name} has no zero weights in its "
                         f"{len(targets)} target layers, so there is no sparsity to keep: "
                         "drop --keep-sparsity for plain fine-tuning")
    return masks, mask_origin(model_name, masks.sparsity())


def pruned_tensors(model_name: str) -> set[str]:
    """The weights an obert run pruned in the folder ``model_name`` (its sparsity.json)."""
    path = Path(model_name) / "sparsity.json"
    if not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text()).get("tensors", {}))
    except (ValueError, AttributeError):
        return set()


def mask_origin(model_name: str, sparsity: float) -> dict:
    """Where fixed masks came from: the start model, its sparsity, and how it was pruned
    (from its own ``sparsity.json``, when it has one)."""
    origin: dict = {"origin": model_name, "sparsity": sparsity}
    upstream = Path(model_name) / "sparsity.json"
    if upstream.is_file():
        up = json.loads(upstream.read_text())
        origin["upstream"] = {k: up.get(k) for k in ("method", "source_model", "global_sparsity")}
    return origin


def provenance(model_name: str, data: DataArgs) -> dict:
    """Where an output came from, for its ``sparsity.json``."""
    return {"obert_version": __version__, "source_model": model_name, "data": data.describe()}


def write_output(output: str, overwrite: bool, model, tokenizer, model_name: str,
                  data: DataArgs, info: dict, metrics: dict,
                  extra: Callable[[Path], None] | None = None, command: str = "",
                  inputs: list | None = None) -> None:
    """The model folder with sparsity.json (provenance added) and eval_results.json, atomically;
    ``extra`` writes more files into the temporary folder before it is renamed. ``command``
    goes into obert's marker; ``inputs`` (default: the model and data) are never replaced."""
    info = {**info, **provenance(model_name, data)}
    inputs = input_paths(model_name, data) if inputs is None else inputs
    with atomic_output(output, overwrite, log, command, inputs) as tmp:
        save_model(model, tokenizer, tmp, info, metrics)
        if metrics:
            (tmp / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if extra is not None:
            extra(tmp)


def run_evaluate(model_name: str, data: DataArgs, split: str = "dev", max_seq_length: int = 128,
                 batch_size: int = 64, quiet: bool = False, runtime: str = "pytorch") -> dict:
    """The task metrics of a model on a split; ``runtime`` fp32/int8 scores the model compiled
    onto obert's kernels (``obert.runtime.compile``), the one that runs fast."""
    task = data.spec
    check_inputs(model_name, data, max_seq_length)
    ds = data.load(split)
    if len(ds) and "label" in ds.column_names and ds[0]["label"] == -1:
        raise ObertError(f"the {split} split of {task.name} has no labels to score: use --split dev")
    tokenizer = load_tokenizer(model_name)
    model, head = load_classifier(model_name, task, with_info=True)
    check_head(model_name, head, task)
    layers = None
    if runtime != "pytorch":
        model, layers = compile_for(model, runtime, log)
    metrics = evaluate_split(model, ds, tokenizer, task, max_seq_length, batch_size, quiet,
                             data.doc_stride)
    sp = Path(model_name) / "sparsity.json"
    sparsity = json.loads(sp.read_text())["global_sparsity"] if sp.is_file() else None
    return {"task": task.name, "split": split, **metrics, "sparsity": sparsity,
            "runtime": runtime, **({"kernels": layers} if layers else {})}


def targets_or_none(model) -> dict:
    try:
        return find_targets(model)
    except ObertError:
        return {}


def maybe_evaluate(model, tokenizer, data: DataArgs, max_seq_length: int, quiet: bool) -> dict:
    """Dev metrics when a dev split can be had; training outputs do not fail without one."""
    try:
        dev = data.load("dev")
    except ObertError as e:
        log(f"no evaluation: {e}")
        return {}
    task = data.spec
    metrics = evaluate_split(model, dev, tokenizer, task, max_seq_length, quiet=quiet,
                             doc_stride=data.doc_stride)
    log("dev " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in metrics.items()))
    return {"task": task.name, "split": "dev", **metrics}

