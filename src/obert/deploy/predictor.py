"""The served model, described once: ``Predictor`` loads a model folder or hub id with its own
tokenizer and labels, compiles it once onto obert's kernels (``obert.runtime.engine.compile_for``,
the model ``obert compile``/``evaluate``/``bench`` run), knows its task kind and input limits,
and turns a batch of inputs into answers: tokenized together, padded, one forward, decoded.
``obert.pipeline`` and ``obert serve`` both read it.

Kinds and their inputs (one item each):

- ``classification`` / ``regression``: a text, a pair ``[text, text_pair]``, or
  ``{"text": ..., "text_pair": ...}``; answers ``{"label", "score"}`` (softmax, or sigmoid for
  one label, as transformers' text-classification pipeline), ``{"value"}`` for regression;
- ``qa``: ``{"question", "context"}`` (or ``[question, context]``); the context is cut into
  overlapping windows and the best span found as ``obert evaluate`` finds it
  (``obert.data.qa``); answers ``{"answer", "start", "end", "score"}``;
- ``multiple_choice``: ``{"question", "choices": [...]}`` encoded as obert trains it
  (``obert.data.mc``); answers ``{"choice", "answer", "score", "scores"}``;
- ``mlm``: a text holding the tokenizer's mask token; answers transformers' fill-mask list.

Every answer depends on its own input only: the kernels' outputs do not depend on padding or on
the other rows of a batch (per-token activation scales, attention over the row's own keys).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from obert.errors import ObertError

logger = logging.getLogger(__name__)

RUNTIMES = ("int8", "fp32", "pytorch")
KINDS = ("classification", "regression", "qa", "multiple_choice", "mlm")
# transformers' pipeline task names -> kind (obert's task names work too: sst2, squad, ...)
PIPELINE_TASKS = {"text-classification": "classification", "sentiment-analysis": "classification",
                  "question-answering": "qa", "multiple-choice": "multiple_choice",
                  "fill-mask": "mlm"}
_ARCH_KINDS = (("ForSequenceClassification", "classification"), ("ForQuestionAnswering", "qa"),
               ("ForMultipleChoice", "multiple_choice"), ("ForMaskedLM", "mlm"))
QA_MAX_LENGTH = 384  # SQuAD's windows (the task's default sequence length)
QA_DOC_STRIDE = 128
TOP_K = 5  # fill-mask candidates per mask, transformers' default


class InputError(ObertError):
    """One input the model cannot take, said in one line (the server answers 422)."""


@dataclass
class Part:
    """Padded model inputs for some of a batch's items (multiple choice: one part per number of
    choices; every other kind: one part)."""

    items: list[int]  # positions in Encoded.items
    tensors: dict[str, torch.Tensor]


@dataclass
class Encoded:
    """A batch's items tokenized together: the valid ones padded into parts, the others'
    reasons by position."""

    items: list  # normalised items, in request order
    errors: dict[int, str] = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # qa: the windows' ids and offsets

    @property
    def rows(self) -> int:
        return sum(len(next(iter(p.tensors.values()))) for p in self.parts)

    @property
    def padded_tokens(self) -> int:
        return sum(p.tensors["input_ids"].numel() for p in self.parts)


@dataclass
class BatchResult:
    """What ``Predictor.predict_batch`` gives back: an answer or an InputError per item, and
    where the time went."""

    outputs: list
    rows: int  # sequences run (QA windows, choices x questions)
    padded_tokens: int
    encode_s: float
    forward_s: float
    decode_s: float


class _Span(str):
    """An answer text that remembers where it sits in its context."""

    start: int
    end: int


class _Context(str):
    """A context whose slices are ``_Span``s: ``obert.data.qa.postprocess`` picks the best
    span by slicing the context, so its choice comes back with its character offsets."""

    def __getitem__(self, key):
        text = str.__getitem__(self, key)
        if not isinstance(key, slice):
            return text
        span = _Span(text)
        span.start, span.end, _ = key.indices(len(self))
        return span


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum()))


@contextlib.contextmanager
def _no_datasets_bars():
    """``datasets`` progress bars off for a call (MC encoding maps a small dataset)."""
    import datasets

    was = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            datasets.enable_progress_bars()


def _is_text(x: Any) -> bool:
    return isinstance(x, str)


class Predictor:
    """A model ready to answer: ``model`` (compiled for ``runtime`` fp32/int8, or PyTorch's),
    its ``tokenizer``, its ``kind`` (``KINDS``) and labels, the longest input it takes
    (``max_length`` tokens; longer texts are cut with ``truncate``, else refused) and what
    runs (``engine``: kernels, Linears on each engine, INT8 attention, trained scales,
    sparsity). Build it with ``Predictor.load``."""

    def __init__(self, model, tokenizer, kind: str, runtime: str = "pytorch", *, name: str = "",
                 engine: dict | None = None, max_length: int | None = None,
                 truncate: bool = True) -> None:
        if kind not in KINDS:
            raise ObertError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
        self.model, self.tokenizer, self.kind, self.runtime = model.eval(), tokenizer, kind, runtime
        self.name = name or getattr(model.config, "name_or_path", "") or type(model).__name__
        self.engine = dict(engine or {})
        self.config = model.config
        self.truncate = truncate
        if kind == "regression":  # transformers' pipeline then returns the raw value too
            self.config.problem_type = "regression"
        self.max_length = _limit(self.config, tokenizer, max_length)
        self.doc_stride = 0
        if kind == "qa":
            from obert.data.qa import MAX_QUERY_LENGTH, SPECIAL_TOKENS, check_windows

            if max_length is None:
                self.max_length = min(self.max_length, QA_MAX_LENGTH)
            room = self.max_length - MAX_QUERY_LENGTH - SPECIAL_TOKENS
            self.doc_stride = min(QA_DOC_STRIDE, max(1, room // 2))
            check_windows(self.max_length, self.doc_stride)
        if kind == "mlm" and tokenizer.mask_token_id is None:
            raise ObertError(f"{self.name}'s tokenizer has no mask token: fill-mask needs one")

    # --- loading --------------------------------------------------------------------------

    @classmethod
    def load(cls, model: str, runtime: str = "int8", task: str | None = None, *,
             max_length: int | None = None, truncate: bool = True,
             log: Callable[[str], None] | None = None) -> Predictor:
        """``model`` (a local folder or hub id) with its tokenizer, compiled once for
        ``runtime`` ("int8", "fp32": obert's kernels; "pytorch": as transformers runs it).
        ``task``: a transformers pipeline task (text-classification, question-answering,
        multiple-choice, fill-mask) that the model's architecture must match, an obert task
        (sst2, stsb, squad, commonsense_qa, mlm, ...) whose head the model must have trained,
        or None: the kind its config's architecture names. ``log`` gets the INT8 plan's notes."""
        from obert.models import (
            check_head,
            load_classifier,
            load_config,
            load_for_inference,
            load_tokenizer,
        )
        from obert.runtime.bench import linear_sparsity
        from obert.runtime.engine import compile_for

        if runtime not in RUNTIMES:
            raise ObertError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        log = log or logger.warning
        config = load_config(model)
        spec, kind = resolve_task(task, config, model)
        if spec is not None:
            net, head = load_classifier(model, spec, with_info=True)
            check_head(model, head, spec)
        else:
            net = load_for_inference(model)
        tokenizer = load_tokenizer(model)
        engine: dict[str, Any] = {"runtime": runtime, "linear_sparsity": linear_sparsity(net)}
        if runtime != "pytorch":
            net, info = compile_for(net, runtime, log)
            engine.update(info)
            _release_memory()  # the dense weights compile packed: give their pages back
        return cls(net, tokenizer, kind, runtime, name=str(model), engine=engine,
                   max_length=max_length, truncate=truncate)

    @property
    def labels(self) -> list[str]:
        """The classifier's label names, by id (the config's ``id2label``)."""
        id2label = getattr(self.config, "id2label", None) or {}
        return [str(id2label.get(i, f"LABEL_{i}")) for i in range(len(id2label))]

    def describe(self) -> str:
        """One line: the model, its kind and labels, and what runs it."""
        e = self.engine
        what = self.kind + (f" ({', '.join(self.labels)})" if self.kind == "classification"
                            else "")
        line = f"{self.name}: {type(self.model).__name__}, {what}, runtime {self.runtime}"
        if "linears" in e:
            line += (f": {e['linears']} Linears, {e['sparse']} on sparse kernels, {e['int8']} "
                     f"INT8, INT8 attention in {e['int8_attention']} layers, kernels "
                     f"{e['isa']}, trained INT8 scales: {'yes' if e['trained_scales'] else 'no'}")
        if e.get("linear_sparsity") is not None:
            line += f"; linear sparsity {e['linear_sparsity']:.1%}"
        policy = ("windows over longer contexts" if self.kind == "qa" else
                  "longer ones truncated" if self.truncate else "longer ones refused")
        return line + f"; inputs up to {self.max_length} tokens ({policy})"

    # --- inputs ---------------------------------------------------------------------------

    def parse_inputs(self, inputs: Any) -> list:
        """A request's ``inputs`` as a list of items: one item (a text, or an object) or a
        list of them (a list of strings is several texts; a pair is a list of two strings
        inside that list, or an object)."""
        if isinstance(inputs, str | dict):
            inputs = [inputs]
        if not isinstance(inputs, list | tuple):
            raise InputError(f"inputs must be {self._what()} or a list of them, not "
                             f"{type(inputs).__name__}")
        if not inputs:
            raise InputError("inputs is an empty list: send at least one input")
        return [self.parse_item(x, i) for i, x in enumerate(inputs)]

    def _what(self) -> str:
        return {"classification": "a text, a pair [text, text_pair] or {text, text_pair}",
                "regression": "a text, a pair [text, text_pair] or {text, text_pair}",
                "qa": "an object {question, context}",
                "multiple_choice": "an object {question, choices: [...]}",
                "mlm": f"a text with {self.tokenizer.mask_token}"}[self.kind]

    def parse_item(self, x: Any, i: int = 0):
        """One input, checked and normalised: (text, pair or None), (question, context),
        (stem, choices) or a text; an ``InputError`` naming input ``i + 1`` otherwise."""
        bad = InputError(f"input {i + 1} is not {self._what()}")
        kind = self.kind
        if kind in ("classification", "regression"):
            if _is_text(x):
                return (x, None)
            if isinstance(x, list | tuple) and len(x) == 2 and all(map(_is_text, x)):
                return (x[0], x[1])
            if isinstance(x, dict) and _is_text(x.get("text")) and set(x) <= {"text", "text_pair"}:
                pair = x.get("text_pair")
                if pair is not None and not _is_text(pair):
                    raise bad
                return (x["text"], pair)
            raise bad
        if kind == "mlm":
            if not _is_text(x):
                raise bad
            return x
        if kind == "qa":
            if isinstance(x, dict) and set(x) == {"question", "context"}:
                x = (x["question"], x["context"])
            if isinstance(x, list | tuple) and len(x) == 2 and all(map(_is_text, x)):
                return (x[0], x[1])
            raise bad
        # multiple choice
        if not isinstance(x, dict) or not set(x) <= {"question", "stem", "choices"}:
            raise bad
        stem, choices = x.get("question", x.get("stem")), x.get("choices")
        if not _is_text(stem) or not isinstance(choices, list | tuple) or not all(
                map(_is_text, choices)):
            raise bad
        if len(choices) < 2:
            raise InputError(f"input {i + 1} has {len(choices)} choice(s): give at least 2")
        return (stem, tuple(choices))

    # --- batch: encode, forward, decode ---------------------------------------------------

    def encode(self, items: Sequence) -> Encoded:
        """Tokenize ``items`` together and pad them; items the model cannot take get their
        reason in ``errors`` (the others still run)."""
        enc = Encoded(list(items))
        if not items:
            return enc
        if self.kind == "qa":
            self._encode_qa(enc)
        elif self.kind == "multiple_choice":
            self._encode_mc(enc)
        else:
            self._encode_texts(enc)
        return enc

    def _too_long(self, i: int, n: int) -> str:
        return (f"input {i + 1} is {n} tokens long and {self.name} takes at most "
                f"{self.max_length}: shorten it (this server refuses longer inputs rather than "
                "cut them)")

    def _encode_texts(self, enc: Encoded) -> None:
        tok = self.tokenizer
        kw = (dict(truncation=True, max_length=self.max_length) if self.truncate
              else dict(truncation=False))
        rows: dict[int, dict] = {}
        items = enc.items if self.kind != "mlm" else [(t, None) for t in enc.items]
        for paired in (False, True):
            idx = [i for i, (_, p) in enumerate(items) if (p is not None) == paired]
            if not idx:
                continue
            args = [[items[i][0] for i in idx]] + ([[items[i][1] for i in idx]] if paired else [])
            out = tok(*args, **kw)
            for j, i in enumerate(idx):
                rows[i] = {k: out[k][j] for k in out}
        for i, row in rows.items():
            n = len(row["input_ids"])
            if n > self.max_length:
                enc.errors[i] = self._too_long(i, n)
            elif self.kind == "mlm" and tok.mask_token_id not in row["input_ids"]:
                enc.errors[i] = (f"input {i + 1} has no {tok.mask_token} token"
                                 + (" within its first tokens" if tok.mask_token
                                    in items[i][0] else "") + ": fill-mask fills one")
        keep = [i for i in range(len(items)) if i not in enc.errors]
        if keep:
            enc.parts.append(Part(keep, tok.pad([rows[i] for i in keep], return_tensors="pt")))

    def _encode_qa(self, enc: Encoded) -> None:
        from obert.data.qa import MAX_QUERY_LENGTH, prepare_eval_features

        examples = {"id": list(range(len(enc.items))),
                    "question": [q for q, _ in enc.items], "context": [c for _, c in enc.items]}
        feats = prepare_eval_features(examples, self.tokenizer, self.max_length, self.doc_stride,
                                      MAX_QUERY_LENGTH)
        names = [k for k in self.tokenizer.model_input_names if k in feats]
        tensors = self.tokenizer.pad({k: feats[k] for k in names}, return_tensors="pt")
        enc.parts.append(Part(list(range(len(enc.items))), dict(tensors)))
        enc.extra = {"example_id": list(feats["example_id"]),
                     "offset_mapping": list(feats["offset_mapping"])}

    def _encode_mc(self, enc: Encoded) -> None:
        import datasets

        from obert.data.mc import ChoiceCollator, encode_choices

        tok = self.tokenizer
        if not self.truncate:
            for i, (stem, choices) in enumerate(enc.items):
                n = max(len(ids) for ids in tok([stem] * len(choices), list(choices))["input_ids"])
                if n > self.max_length:
                    enc.errors[i] = self._too_long(i, n)

        def encoded(idx: list[int]):
            ds = datasets.Dataset.from_dict({
                "stem": [enc.items[i][0] for i in idx],
                "choices": [list(enc.items[i][1]) for i in idx],
                "label": [-1] * len(idx), "line": [i + 1 for i in idx]})
            with _no_datasets_bars():
                return encode_choices(ds, tok, self.max_length)

        by_count: dict[int, list[int]] = {}
        for i, (_, choices) in enumerate(enc.items):
            if i not in enc.errors:
                by_count.setdefault(len(choices), []).append(i)
        collate = ChoiceCollator(tok)
        for idx in by_count.values():
            try:
                rows = encoded(idx)
            except ObertError:  # a choice too long for the stem: find which, keep the rest
                ok = []
                for i in idx:
                    try:
                        encoded([i])
                        ok.append(i)
                    except ObertError:
                        enc.errors[i] = (f"input {i + 1} has a choice that leaves no room for "
                                         f"the question within {self.max_length} tokens: "
                                         "shorten it")
                idx = ok
                rows = encoded(idx) if idx else None
            if rows is not None and len(idx):
                feats = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
                enc.parts.append(Part(idx, collate(feats)))

    @torch.inference_mode()
    def forward(self, enc: Encoded, max_rows: int | None = None) -> list[dict[str, np.ndarray]]:
        """The model's outputs for each part (float32 numpy), run ``max_rows`` sequences at a
        time (None: each part in one call)."""
        outs = []
        for part in enc.parts:
            n = len(part.tensors["input_ids"])
            step = max_rows or n
            chunks = [self.model(**{k: v[a:a + step] for k, v in part.tensors.items()})
                      for a in range(0, n, step)]
            keys = ("start_logits", "end_logits") if self.kind == "qa" else ("logits",)
            outs.append({k: torch.cat([c[k] for c in chunks]).float().numpy() for k in keys})
        return outs

    def decode(self, enc: Encoded, outs: list[dict[str, np.ndarray]]) -> list:
        """An answer (a dict, a list for fill-mask) or an ``InputError`` per item."""
        result: list = [None] * len(enc.items)
        for i, why in enc.errors.items():
            result[i] = InputError(why)
        for part, out in zip(enc.parts, outs, strict=True):
            if self.kind == "qa":
                answers = self._decode_qa(enc, out)
            elif self.kind == "mlm":
                answers = self._decode_mlm(part, out["logits"])
            elif self.kind == "multiple_choice":
                answers = [self._decode_mc(enc.items[i][1], row)
                           for i, row in zip(part.items, out["logits"], strict=True)]
            else:
                answers = [self._decode_class(row) for row in out["logits"]]
            for i, a in zip(part.items, answers, strict=True):
                result[i] = a
        return result

    def _decode_class(self, logits: np.ndarray) -> dict:
        if self.kind == "regression":
            return {"value": float(logits[0])}
        cfg = self.config
        if cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1:
            scores = _sigmoid(logits)
        else:
            scores = _softmax(logits)
        best = int(scores.argmax())
        return {"label": self.labels[best] if best < len(self.labels) else f"LABEL_{best}",
                "score": float(scores[best])}

    def _decode_mc(self, choices: tuple[str, ...], logits: np.ndarray) -> dict:
        p = _softmax(logits.astype(np.float64))
        best = int(p.argmax())
        return {"choice": best, "answer": choices[best], "score": float(p[best]),
                "scores": [float(x) for x in p]}

    def _decode_mlm(self, part: Part, logits: np.ndarray) -> list:
        """transformers' fill-mask answer: the top candidates per mask, each with its score,
        token, token text and the filled-in sequence (padding left out)."""
        tok = self.tokenizer
        out = []
        for row, ids in enumerate(part.tensors["input_ids"]):
            ids = ids[part.tensors["attention_mask"][row].bool()]
            where = torch.nonzero(ids == tok.mask_token_id).squeeze(-1)
            probs = torch.from_numpy(logits[row, where]).softmax(-1)
            values, preds = probs.topk(min(TOP_K, probs.shape[-1]))
            single = len(where) == 1
            per_mask = []
            for m, (vs, ps) in enumerate(zip(values.tolist(), preds.tolist(), strict=True)):
                cands = []
                for v, p in zip(vs, ps, strict=True):
                    filled = ids.numpy().copy()
                    filled[where[m]] = p
                    filled = filled[filled != tok.pad_token_id]
                    cands.append({"score": v, "token": p, "token_str": tok.decode([p]),
                                  "sequence": tok.decode(filled, skip_special_tokens=single)})
                per_mask.append(cands)
            out.append(per_mask[0] if single else per_mask)
        return out

    def _decode_qa(self, enc: Encoded, out: dict[str, np.ndarray]) -> list[dict]:
        """The best span per question over its windows, chosen by ``obert.data.qa.postprocess``
        (n-best starts and ends, inside the context, at most 30 tokens); its score is
        P(start) · P(end), softmax over the window's context tokens."""
        from obert.data.qa import postprocess

        start, end = out["start_logits"], out["end_logits"]
        examples = [{"id": i, "context": _Context(c)} for i, (_, c) in enumerate(enc.items)]
        feats = enc.extra
        best = postprocess(examples, feats, start, end)
        answers = []
        for i in range(len(enc.items)):
            span = best[i]
            if not isinstance(span, _Span):  # no span inside the context
                answers.append({"answer": "", "start": 0, "end": 0, "score": 0.0})
                continue
            score = 0.0
            for f, eid in enumerate(feats["example_id"]):
                offs = feats["offset_mapping"][f]
                if eid != i:
                    continue
                s = [j for j, o in enumerate(offs) if o is not None and o[0] == span.start]
                e = [j for j, o in enumerate(offs) if o is not None and o[1] == span.end]
                ctx = [j for j, o in enumerate(offs) if o is not None]
                if not (s and e):
                    continue
                logp = (start[f][s[0]] - _logsumexp(start[f][ctx])
                        + end[f][e[-1]] - _logsumexp(end[f][ctx]))
                score = max(score, float(np.exp(logp)))
            answers.append({"answer": str(span), "start": span.start,
                            "end": span.end, "score": score})
        return answers

    def predict_batch(self, items: Sequence, max_rows: int | None = None) -> BatchResult:
        """``items`` (from ``parse_item``) as one batch: answers (or InputErrors) in order,
        with the time spent tokenizing, in the model and decoding."""
        t0 = time.perf_counter()
        enc = self.encode(items)
        t1 = time.perf_counter()
        outs = self.forward(enc, max_rows)
        t2 = time.perf_counter()
        answers = self.decode(enc, outs)
        t3 = time.perf_counter()
        return BatchResult(answers, enc.rows, enc.padded_tokens, t1 - t0, t2 - t1, t3 - t2)

    def __call__(self, inputs: Any, batch_size: int = 32) -> list:
        """Answers for ``inputs`` (as ``parse_inputs`` takes them), ``batch_size`` at a time;
        the first input the model cannot take raises its InputError."""
        items = self.parse_inputs(inputs)
        out = []
        for a in range(0, len(items), batch_size):
            out += self.predict_batch(items[a:a + batch_size]).outputs
        for x in out:
            if isinstance(x, InputError):
                raise x
        return out


def _release_memory() -> None:
    """Collect garbage and, on glibc, hand freed heap pages back to the system (a compiled
    model's dense original would otherwise stay in the process's RSS)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _limit(config, tokenizer, max_length: int | None) -> int:
    """The longest input: the model's positions (and the tokenizer's limit, if it names a
    real one), or ``max_length`` when given and within them."""
    from obert.models import check_seq_len, max_tokens

    n = max_tokens(config) or 512
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        n = min(n, tok_max)
    if max_length is None:
        return n
    check_seq_len(config, max_length, "--max-length")
    if max_length < 8:
        raise ObertError(f"--max-length {max_length} is too short: use at least 8 tokens")
    return max_length


def arch_kind(config) -> tuple[str | None, str | None]:
    """(the architecture its config names, the kind that architecture answers)."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    for suffix, kind in _ARCH_KINDS:
        if arch and arch.endswith(suffix):
            if kind == "classification" and getattr(config, "problem_type", None) == "regression":
                kind = "regression"
            return arch, kind
    return arch, None


def resolve_task(task: str | None, config, name: str):
    """(the obert TaskSpec to load the head for, or None; the kind) of a ``task`` given as a
    transformers pipeline task, an obert task or None (the config's architecture decides)."""
    from obert.data.tasks import get_task

    arch, kind = arch_kind(config)
    if task is None or task.lower() in PIPELINE_TASKS:
        want = PIPELINE_TASKS.get((task or "").lower())
        if kind is None:
            raise ObertError(
                f"cannot tell what {name} answers from its architecture ({arch or 'none named'}"
                "): pass a task, e.g. sst2, stsb, squad, commonsense_qa or mlm (its head must "
                "be trained: obert finetune)")
        if want is not None and want != kind and not (want == "classification"
                                                        and kind == "regression"):
            raise ObertError(f"{name} is a {arch} ({kind.replace('_', ' ')}), not a {task} "
                             "model: pass the task it was trained for, or none")
        return None, kind
    spec = get_task(task)
    kind = spec.kind
    if spec.is_regression:
        kind = "regression"
    return spec, kind
