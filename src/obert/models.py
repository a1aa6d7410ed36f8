"""Load models and tokenizers by hub id or local folder, safetensors only."""

from __future__ import annotations

import logging
import os

from obert.data.tasks import TaskSpec
from obert.errors import ObertError


def has_cuda() -> bool:
    """Train on the GPU when there is one (the one place that decides)."""
    import torch

    return torch.cuda.is_available()


def _quiet_transformers() -> None:
    # The load report for a freshly initialised head is expected here, not a warning.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_classifier(name_or_path: str, task: TaskSpec, with_info: bool = False):
    """An ``AutoModelForSequenceClassification`` with the task's label count and names (an
    ``AutoModelForQuestionAnswering`` for a QA task).

    Only safetensors weights are accepted: a pickled checkpoint is never unpickled. With
    ``with_info`` it returns ``(model, finetuned)``: whether every weight, the task head
    included, came from the checkpoint (the model is already fine-tuned for this task).
    """
    from transformers import (
        AutoConfig,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
    )

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e)) from None
    auto = AutoModelForQuestionAnswering if task.is_qa else AutoModelForSequenceClassification
    same_task = config.num_labels == task.num_labels and getattr(config, "finetuning_task", None) == task.name
    kwargs = {}
    if not same_task and not task.is_qa:  # a QA head's shape does not depend on the task
        kwargs = dict(num_labels=task.num_labels, ignore_mismatched_sizes=True)
        if task.label_names:
            kwargs["id2label"] = dict(enumerate(task.label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(task.label_names)}
        if task.is_regression:
            kwargs["problem_type"] = "regression"
    try:
        model, info = auto.from_pretrained(
            name_or_path, use_safetensors=True, output_loading_info=True, **kwargs
        )
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e)) from None
    model.config.finetuning_task = task.name
    if with_info:
        fresh = info.get("missing_keys") or info.get("mismatched_keys")
        return model, not fresh
    return model


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    if os.path.isdir(name_or_path) and not any(
        os.path.isfile(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES
    ):
        # transformers would build a near-empty tokenizer and map every word to [UNK].
        raise ObertError(
            f"model folder {name_or_path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}"
            ", ...): save the tokenizer beside the model"
        )
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e, "tokenizer")) from None


def _load_error(name: str, e: Exception, what: str = "model") -> str:
    if os.path.isdir(name):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        need = "tokenizer files" if what == "tokenizer" else "config.json and model.safetensors"
        return f"cannot load the {what} in {name}: {first[:200]}; it needs {need}"
    if os.path.sep in name and not os.path.exists(name):
        return f"model folder {name} does not exist"
    return (f"cannot load {name!r} from the Hugging Face hub ({type(e).__name__}): "
            "check the id, or pass a local model folder")


def load_for_inference(name_or_path: str):
    """The model class its config names (``architectures[0]``), else ``AutoModel``; eval mode."""
    import transformers
    from transformers import AutoConfig, AutoModel

    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e)) from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    try:
        model = (cls or AutoModel).from_pretrained(name_or_path, use_safetensors=True)
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e)) from None
    return model.eval()
