"""``obert.pipeline``: a transformers ``Pipeline`` whose model is the compiled one.

    import obert
    clf = obert.pipeline("text-classification", "runs/sst2-90-qat", runtime="int8")
    clf(["a gripping film", "a dull film"])   # [{'label': 'positive', 'score': ...}, ...]

Text classification (and regression) and fill-mask are transformers' own pipeline classes
(``TextClassificationPipeline``, ``FillMaskPipeline``) given the compiled model: a compiled
model is still the transformers model class it was, with obert's kernels in place of its
Linears, so the pipeline's tokenization and post-processing are transformers' own. transformers
5 has no extractive question-answering pipeline (it was removed) and never had a
multiple-choice one: those two are small ``Pipeline`` subclasses on the predictor's own
pre- and post-processing, the code ``obert serve`` runs (SQuAD windows and best span as
``obert evaluate`` finds them; choices encoded as obert trains them).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import FillMaskPipeline, Pipeline, TextClassificationPipeline

from obert.deploy.predictor import PIPELINE_TASKS, InputError, Predictor, resolve_task
from obert.errors import ObertError

logger = logging.getLogger(__name__)


def _check_length(pipe, model_inputs) -> None:
    limit = pipe.predictor.max_length
    n = model_inputs["input_ids"].shape[-1]
    if n > limit:
        raise InputError(f"the input is {n} tokens long and {pipe.predictor.name} takes at most "
                         f"{limit}: shorten it, or build the pipeline with truncate=True")


class ObertTextClassificationPipeline(TextClassificationPipeline):
    """transformers' text-classification pipeline on a ``Predictor``'s model and tokenizer;
    texts longer than the model's positions are cut (``truncate``) or refused."""

    def __init__(self, predictor: Predictor, **kwargs: Any) -> None:
        self.predictor = predictor
        if predictor.truncate:
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", predictor.max_length)
        kwargs.setdefault("device", "cpu")
        super().__init__(model=predictor.model, tokenizer=predictor.tokenizer,
                         task="text-classification", **kwargs)

    def preprocess(self, inputs, **tokenizer_kwargs):
        out = super().preprocess(inputs, **tokenizer_kwargs)
        _check_length(self, out)
        return out


class ObertFillMaskPipeline(FillMaskPipeline):
    """transformers' fill-mask pipeline on a ``Predictor``'s model and tokenizer."""

    def __init__(self, predictor: Predictor, **kwargs: Any) -> None:
        self.predictor = predictor
        if predictor.truncate:
            kwargs.setdefault("tokenizer_kwargs", {"truncation": True,
                                                   "max_length": predictor.max_length})
        kwargs.setdefault("device", "cpu")
        super().__init__(model=predictor.model, tokenizer=predictor.tokenizer, task="fill-mask",
                         **kwargs)

    def preprocess(self, inputs, return_tensors=None, tokenizer_kwargs=None, **kwargs):
        out = super().preprocess(inputs, return_tensors, tokenizer_kwargs, **kwargs)
        _check_length(self, out)
        return out


class _PredictorPipeline(Pipeline):
    """A pipeline whose steps are the predictor's: ``preprocess`` encodes one input (its
    windows or choices padded together), ``_forward`` runs the compiled model, ``postprocess``
    decodes. A list with ``batch_size`` > 1 runs as the server's batches do."""

    task_name = ""

    def __init__(self, predictor: Predictor, **kwargs: Any) -> None:
        self.predictor = predictor
        kwargs.setdefault("device", "cpu")
        super().__init__(model=predictor.model, tokenizer=predictor.tokenizer,
                         task=self.task_name, **kwargs)

    def _sanitize_parameters(self, **kwargs):
        if kwargs:
            raise ObertError(f"{self.task_name} pipeline: unknown argument(s) "
                             f"{', '.join(sorted(kwargs))}")
        return {}, {}, {}

    def _inputs(self, inputs, kwargs: dict):
        return inputs

    def __call__(self, inputs=None, *args, **kwargs):
        inputs = self._inputs(inputs, kwargs)
        batch_size = kwargs.pop("batch_size", None) or self._batch_size or 1
        if isinstance(inputs, list | tuple) and not self._is_one(inputs):
            items = self.predictor.parse_inputs(list(inputs))
            if batch_size > 1:
                return self.predictor(list(inputs), batch_size=batch_size)
            return super().__call__(items, *args, **kwargs)
        return super().__call__(self.predictor.parse_item(inputs), *args, **kwargs)

    def _is_one(self, inputs) -> bool:
        return False

    def preprocess(self, item):
        enc = self.predictor.encode([item])
        if enc.errors:
            raise InputError(enc.errors[0].replace("input 1 ", "the input ", 1))
        return {"encoded": enc}

    def _forward(self, model_inputs):
        enc = model_inputs["encoded"]
        return {"encoded": enc, "outputs": self.predictor.forward(enc)}

    def postprocess(self, model_outputs):
        return self.predictor.decode(model_outputs["encoded"], model_outputs["outputs"])[0]


class ObertQuestionAnsweringPipeline(_PredictorPipeline):
    """Extractive QA: ``pipe(question=..., context=...)``, ``pipe({"question", "context"})``
    or a list of those; answers ``{"answer", "start", "end", "score"}``."""

    task_name = "question-answering"

    def _inputs(self, inputs, kwargs: dict):
        question, context = kwargs.pop("question", None), kwargs.pop("context", None)
        if inputs is None and question is not None and context is not None:
            if isinstance(question, list) and isinstance(context, list):
                return [{"question": q, "context": c} for q, c in zip(question, context,
                                                                      strict=True)]
            return {"question": question, "context": context}
        if inputs is None:
            raise InputError("question answering needs question= and context=, or "
                             "{question, context} inputs")
        return inputs

    def _is_one(self, inputs) -> bool:  # [question, context]
        return len(inputs) == 2 and all(isinstance(x, str) for x in inputs)


class ObertMultipleChoicePipeline(_PredictorPipeline):
    """Multiple choice: ``pipe(question=..., choices=[...])``, ``pipe({"question", "choices"})``
    or a list of those; answers ``{"choice", "answer", "score", "scores"}``."""

    task_name = "multiple-choice"

    def _inputs(self, inputs, kwargs: dict):
        question, choices = kwargs.pop("question", None), kwargs.pop("choices", None)
        if inputs is None and question is not None and choices is not None:
            return {"question": question, "choices": list(choices)}
        if inputs is None:
            raise InputError("multiple choice needs question= and choices=, or "
                             "{question, choices} inputs")
        return inputs


PIPELINES = {"classification": ObertTextClassificationPipeline,
             "regression": ObertTextClassificationPipeline,
             "qa": ObertQuestionAnsweringPipeline,
             "multiple_choice": ObertMultipleChoicePipeline,
             "mlm": ObertFillMaskPipeline}


def pipeline(task: str | None = None, model: str | Predictor | None = None,
             runtime: str = "int8", *, max_length: int | None = None, truncate: bool = True,
             **kwargs: Any) -> Pipeline:
    """A transformers ``Pipeline`` on ``model`` compiled for ``runtime``: "int8" or "fp32"
    (obert's sparse CPU kernels, ``obert.runtime.compile``) or "pytorch" (the model as
    transformers runs it). ``task``: text-classification (regression too), question-answering,
    multiple-choice, fill-mask, an obert task name (sst2, squad, ...), or None for the kind
    the model's architecture names. ``model``: a local folder, a hub id, or a ``Predictor``.
    Inputs over ``max_length`` tokens (default: the model's positions) are cut, or refused
    with ``truncate=False``. Other keyword arguments go to the pipeline (``top_k``,
    ``batch_size``, ``function_to_apply``, ...)."""
    if model is None:
        raise ObertError("obert.pipeline needs a model: a local model folder or a hub id")
    if isinstance(model, Predictor):
        predictor = model
        if task is not None:
            _, kind = resolve_task(task, predictor.config, predictor.name)
            if kind != predictor.kind:
                raise ObertError(f"the predictor answers {predictor.kind}, not {task}")
    else:
        if task is not None and task.lower() not in PIPELINE_TASKS:
            from obert.data.tasks import get_task

            get_task(task)  # a typo fails before the model loads
        predictor = Predictor.load(str(model), runtime, task, max_length=max_length,
                                   truncate=truncate, log=logger.warning)
    return PIPELINES[predictor.kind](predictor, **kwargs)
