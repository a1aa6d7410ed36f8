"""Load models and tokenizers by hub id or local folder, safetensors only."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

from obert.data.tasks import TASKS, TaskSpec
from obert.errors import ObertError
from obert.finite import check_finite
from obert.hub import reachable


def has_cuda() -> bool:
    """Train on the GPU when there is one (the one place that decides)."""
    import torch

    return torch.cuda.is_available()


def _quiet_transformers() -> None:
    # The load report for a freshly initialised head is expected here, not a warning.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)


# Encoders whose position ids start after the padding index (RoBERTa-style: position
# pad_token_id + i for token i, so 514 positions with pad 1 take 512 tokens).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "roberta-prelayernorm",
                     "camembert", "longformer", "data2vec-text", "ibert", "mpnet", "luke",
                     "xmod", "esm", "markuplm", "lilt", "layoutlmv3")


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
    if not reachable(constants.ENDPOINT):
        raise ObertError(f"{name!r} is not a local folder and the Hugging Face hub "
                         f"({constants.ENDPOINT}) cannot be reached: pass a local model folder")


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
        pad = getattr(config, "pad_token_id", None)
        n -= (1 if pad is None else pad) + 1  # the last token sits at position n + pad
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
    check_encoder(config, name_or_path)
    auto = auto_class(task)
    check_head_class(config, name_or_path, task)
    trained_for = getattr(config, "finetuning_task", None)
    head = head_info(config)  # what the checkpoint says, before the load adapts the config
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
    check_finite(model, f"model {name_or_path}", BROKEN_WEIGHTS)
    if not task.is_mlm:  # an MLM model stays what it was (pretrained or fine-tuned elsewhere)
        model.config.finetuning_task = task.name
    if with_info:
        fresh = info.get("missing_keys") or info.get("mismatched_keys")
        return model, replace(head, head_loaded=not fresh)
    return model


BROKEN_WEIGHTS = ("its weights are broken (saved by a run that diverged?): use the checkpoint "
                  "before it, or train again with a lower learning rate")


def check_encoder(config, name: str) -> None:
    """Refuse a decoder-only model (GPT-2 and the like): obert's tasks, targets and kernels are
    those of bidirectional encoders. The one check every loader and ``check_inputs`` make."""
    import transformers as tf

    archs = getattr(config, "architectures", None) or []
    causal_only = (type(config) in tf.MODEL_FOR_CAUSAL_LM_MAPPING
                   and type(config) not in tf.MODEL_FOR_MASKED_LM_MAPPING)
    if (getattr(config, "is_decoder", False) or causal_only
            or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        kind = getattr(config, "model_type", type(config).__name__)
        raise ObertError(f"{name} is a decoder-only {kind} model (a causal language model): "
                         "obert prunes bidirectional encoders such as BERT, RoBERTa or "
                         "DistilBERT; pass one of those")


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
    num_labels: int | None = None  # a sequence classifier's label count (None: no such head)
    problem_type: str | None = None  # its config's problem_type, when set

    def fine_tuned_on(self, task: TaskSpec) -> bool:
        """The head was loaded and obert (or the config) says it was trained on ``task``; an
        MLM head that loaded is trained for MLM (that is what pretraining trains)."""
        return self.head_loaded and (self.trained_for == task.name or task.is_mlm)


def head_info(config, loaded: bool = True) -> HeadInfo:
    """The task head a model's config describes (``loaded``: its weights are in the
    checkpoint, as for a model loaded by its own class)."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    classifier = arch.endswith("ForSequenceClassification")
    return HeadInfo(loaded, getattr(config, "finetuning_task", None),
                    getattr(config, "num_labels", None) if classifier else None,
                    getattr(config, "problem_type", None) if classifier else None)


def _norm_task(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


_KNOWN = {_norm_task(t): t for t in TASKS}


def trained_on_other_task(trained_for: str | None, task: TaskSpec) -> str | None:
    """The obert task a config's ``finetuning_task`` names when it is not ``task`` (spellings
    such as sst-2 or STS-B included); None when it is, or names nothing obert knows. The
    generic multiple_choice task takes a head of any multiple-choice task."""
    other = _KNOWN.get(_norm_task(trained_for or ""))
    if other is None or other == task.name or task.is_mlm:
        return None
    if task.is_mc and (task.name == "multiple_choice" or other == "multiple_choice"):
        return None
    return other


def check_head(name: str, info: HeadInfo, task: TaskSpec, role: str = "model") -> None:
    """Refuse a model whose task head was made up at load time (chance-level scores) or was
    trained for another task: another label count, problem type, or ``finetuning_task``."""
    other = trained_on_other_task(info.trained_for, task)
    if other is not None:
        raise ObertError(
            f"the {role} {name} was fine-tuned on {other} (its config's finetuning_task), not "
            f"{task.name}: its head answers another task; use a {role} fine-tuned on "
            f"{task.name} (obert finetune --task {task.name})")
    if task.kind == "classification" and info.num_labels not in (None, task.num_labels):
        raise ObertError(
            f"the {role} {name} has a {info.num_labels}-label head, but {task.name} has "
            f"{task.num_labels} {'label' if task.num_labels == 1 else 'labels'}: use a {role} "
            f"fine-tuned on {task.name} (obert finetune --task {task.name})")
    want = "regression" if task.is_regression else "single_label_classification"
    if task.kind == "classification" and info.problem_type not in (None, want):
        raise ObertError(
            f"the {role} {name} has a {info.problem_type} head, but {task.name} is "
            f"{want.replace('_', '-')}: use a {role} fine-tuned on {task.name}")
    if not info.head_loaded and task.is_mlm:
        raise ObertError(
            f"the {role} {name} has no trained masked-LM head (its weights are not in the "
            "checkpoint, so it would start random): fit one on the frozen encoder first with "
            "obert finetune --task mlm --head-only (see docs/upstream.md)")
    if not info.head_loaded:
        raise ObertError(
            f"the {role} {name} has no trained {task.name} head (its head would start random "
            f"and score at chance): fine-tune it first with obert finetune --task {task.name}")


# The class-name ending of a model that has each task kind's head (its config's architectures).
_HEAD_CLASSES = {"classification": ("ForSequenceClassification",),
                 "qa": ("ForQuestionAnswering",), "multiple_choice": ("ForMultipleChoice",),
                 "mlm": ("ForMaskedLM", "ForPreTraining")}


def check_fits_task(config, name: str, task: TaskSpec, role: str = "model") -> None:
    """For a model loaded by its own class (``load_for_inference``: bench, export): its
    architecture has ``task``'s kind of head, trained for that task (``check_head``)."""
    arch = (getattr(config, "architectures", None) or [""])[0]
    if not arch.endswith(_HEAD_CLASSES[task.kind]):
        raise ObertError(f"the {role} {name} is a {arch or 'model without a task head'}, which "
                         f"has no {task.name} head: use a {role} fine-tuned on {task.name} "
                         f"(obert finetune --task {task.name})")
    check_head(name, head_info(config), task, role)


def check_same_vocab(student_name: str, student, student_tok, teacher_name: str, teacher,
                     teacher_tok) -> None:
    """KD compares the teacher's and the student's outputs on the same token ids: they need one
    vocabulary (the configs' vocab_size, and the tokenizers' token -> id maps when both have
    one)."""
    sv, tv = student.config.vocab_size, teacher.config.vocab_size
    if sv != tv:
        raise ObertError(f"the teacher {teacher_name} has a vocabulary of {tv:,} tokens and the "
                         f"student {student_name} one of {sv:,}: distillation needs the same "
                         "tokenizer; use a teacher fine-tuned from the student's base model")
    if teacher_tok is not None and student_tok.get_vocab() != teacher_tok.get_vocab():
        raise ObertError(f"the tokenizers of the teacher {teacher_name} and the student "
                         f"{student_name} map tokens to different ids (both {sv:,} tokens): "
                         "distillation needs the same tokenizer; use a teacher fine-tuned from "
                         "the student's base model")


def has_tokenizer(name_or_path: str) -> bool:
    """A hub id, or a local folder with tokenizer files."""
    return not os.path.isdir(name_or_path) or any(
        os.path.isfile(os.path.join(name_or_path, f)) for f in TOKENIZER_FILES)


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
    check_encoder(config, name_or_path)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    try:
        model = (cls or AutoModel).from_pretrained(name_or_path, use_safetensors=True)
    except Exception as e:
        raise ObertError(_load_error(name_or_path, e)) from None
    check_finite(model, f"model {name_or_path}", BROKEN_WEIGHTS)
    return model.eval()
