"""Load models and tokenizers by hub id or local folder, safetensors only."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

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


HUB_REACH_TIMEOUT_S = 3.0
# Models whose position ids start after the padding index (RoBERTa-style): 2 positions unused.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text")


def check_source(name: str) -> None:
    """A local folder, or a hub id that can be fetched now (or is in the local cache).

    Offline (``HF_HUB_OFFLINE``) or with no network, an id that is neither fails in seconds with
    one line instead of transformers' minute of retries."""
    if os.path.isdir(name):
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(name):
        raise ObertError(f"model folder {name} does not exist")
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # cached: transformers can load it offline
    if constants.HF_HUB_OFFLINE:
        raise ObertError(f"{name!r} is neither a local folder nor in the cache, and "
                         "HF_HUB_OFFLINE is set: pass a local model folder")
    if not _hub_reachable(constants.ENDPOINT):
        raise ObertError(f"{name!r} is not a local folder and the Hugging Face hub "
                         f"({constants.ENDPOINT}) cannot be reached: pass a local model folder")


@functools.cache
def _hub_reachable(endpoint: str) -> bool:
    """Can a TCP connection to the hub be opened within ``HUB_REACH_TIMEOUT_S``? The name lookup
    runs in a daemon thread: a resolver that does not answer must not hold us up either."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname, url.port or 443), HUB_REACH_TIMEOUT_S):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(HUB_REACH_TIMEOUT_S)
    return bool(ok)


def load_config(name_or_path: str):
    """The model's config, with a message that blames config.json when it is at fault."""
    from transformers import AutoConfig

    _quiet_transformers()
    check_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e, "config")) from None


def max_tokens(config) -> int | None:
    """The longest sequence the model's position embeddings take, if it has any."""
    n = getattr(config, "max_position_embeddings", None)
    if n is None:
        return None
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        n -= (getattr(config, "pad_token_id", None) or 1) + 1
    return n


def check_seq_len(config, n: int, flag: str = "--max-seq-length") -> None:
    limit = max_tokens(config)
    if limit is not None and n > limit:
        raise ObertError(f"{flag} {n} exceeds the {limit} positions of this "
                         f"{getattr(config, 'model_type', 'model')}: use at most {limit}")


def load_classifier(name_or_path: str, task: TaskSpec, with_info: bool = False):
    """The task's model: an ``AutoModelForSequenceClassification`` with the task's label count
    and names, an ``AutoModelForQuestionAnswering`` for a QA task, an ``AutoModelForMaskedLM``
    for MLM, an ``AutoModelForMultipleChoice`` (one score per choice) for multiple choice.

    Only safetensors weights are accepted: a pickled checkpoint is never unpickled. With
    ``with_info`` it returns ``(model, HeadInfo)``: whether every weight, the task head
    included, came from the checkpoint, and which task its config says it was trained for.
    """
    config = load_config(name_or_path)
    auto = auto_class(task)
    check_head_class(config, name_or_path, task)
    trained_for = getattr(config, "finetuning_task", None)
    same_task = trained_for == task.name and (task.is_mc or config.num_labels == task.num_labels)
    kwargs = {}
    if not same_task and task.is_mc:  # one score per choice: a classifier's head does not fit
        kwargs = dict(ignore_mismatched_sizes=True)
    if not same_task and task.kind == "classification":  # QA and MLM heads have fixed shapes
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
    if not task.is_mlm:  # an MLM model stays what it was (pretrained or fine-tuned elsewhere)
        model.config.finetuning_task = task.name
    if with_info:
        fresh = info.get("missing_keys") or info.get("mismatched_keys")
        return model, HeadInfo(head_loaded=not fresh, trained_for=trained_for)
    return model


def auto_class(task: TaskSpec):
    """The transformers Auto class of a task's model."""
    import transformers as tf

    return {"mlm": tf.AutoModelForMaskedLM, "qa": tf.AutoModelForQuestionAnswering,
            "multiple_choice": tf.AutoModelForMultipleChoice}.get(
                task.kind, tf.AutoModelForSequenceClassification)


def check_head_class(config, name: str, task: TaskSpec) -> None:
    """Refuse a model type that transformers has no class for the task's head (MLM, multiple
    choice); the other heads exist for every encoder."""
    import transformers as tf

    need = {"mlm": (tf.MODEL_FOR_MASKED_LM_MAPPING, "masked-language-model", "AutoModelForMaskedLM",
                    "the mlm task"),
            "multiple_choice": (tf.MODEL_FOR_MULTIPLE_CHOICE_MAPPING, "multiple-choice",
                                "AutoModelForMultipleChoice", "multiple choice")}.get(task.kind)
    if need is None or type(config) in need[0]:
        return
    kind = getattr(config, "model_type", type(config).__name__)
    _, head, cls, what = need
    raise ObertError(f"{name} is a {kind} model, which has no {head} head in transformers (no "
                     f"{cls} class): {what} needs an encoder such as BERT, RoBERTa or DistilBERT")


@dataclass(frozen=True)
class HeadInfo:
    """What a loaded checkpoint says about its task head."""

    head_loaded: bool  # every weight, the head included, came from the checkpoint
    trained_for: str | None  # the config's finetuning_task (obert finetune records it)

    def fine_tuned_on(self, task: TaskSpec) -> bool:
        """The head was loaded and obert (or the config) says it was trained on ``task``; an
        MLM head that loaded is trained for MLM (that is what pretraining trains)."""
        return self.head_loaded and (self.trained_for == task.name or task.is_mlm)


def check_head(name: str, info: HeadInfo, task: TaskSpec, role: str = "model") -> None:
    """Refuse a model whose task head was made up at load time (chance-level scores)."""
    if not info.head_loaded and task.is_mlm:
        raise ObertError(
            f"the {role} {name} has no trained masked-LM head (its weights are not in the "
            "checkpoint, so it would start random): fit one on the frozen encoder first with "
            "obert finetune --task mlm --head-only (see the README, 'Upstream pruning')")
    if not info.head_loaded:
        raise ObertError(
            f"the {role} {name} has no trained {task.name} head (its head would start random "
            f"and score at chance): fine-tune it first with obert finetune --task {task.name}")


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    load_config(name_or_path)  # a broken config.json is named as such, not as the tokenizer
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
        need = {"tokenizer": "tokenizer files", "config": "a valid config.json"}.get(
            what, "config.json and model.safetensors")
        return f"cannot load the {what} in {name}: {_first_sentence(e)}; it needs {need}"
    if os.path.sep in name and not os.path.exists(name):
        return f"model folder {name} does not exist"
    return (f"cannot load {name!r} from the Hugging Face hub ({type(e).__name__}): "
            "check the id, or pass a local model folder")


def _first_sentence(e: Exception, limit: int = 240) -> str:
    """The first sentence of an error, whole words only, on one line."""
    text = " ".join(str(e).split()) or type(e).__name__
    end = text.find(". ")
    text = text[: end + 1] if 0 < end < limit else text
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …"


def is_multiple_choice(model) -> bool:
    """A multiple-choice model: it takes [batch, choices, tokens] and scores each choice."""
    from transformers import MODEL_FOR_MULTIPLE_CHOICE_MAPPING

    return type(model) in MODEL_FOR_MULTIPLE_CHOICE_MAPPING.values()


def load_for_inference(name_or_path: str):
    """The model class its config names (``architectures[0]``), else ``AutoModel``; eval mode."""
    import transformers
    from transformers import AutoModel

    config = load_config(name_or_path)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    try:
        model = (cls or AutoModel).from_pretrained(name_or_path, use_safetensors=True)
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e)) from None
    return model.eval()
