"""``obert export``: the model as an ONNX file, checked with ONNX Runtime on real rows.

Steps: check the output path; load the model; make its INT8 plan (``--int8``: which Linears and
attentions, and a QAT model's trained scales while its weights still fit them); tokenize the
check rows (the task's dev rows, or a fixed set of English sentences); export and check against
``compile`` (``obert.runtime.export``); report.
"""

from __future__ import annotations

from dataclasses import asdict

from obert.compression.plan import int8_plan
from obert.data.source import DataArgs
from obert.errors import ObertError
from obert.fs import writing
from obert.io import check_output
from obert.models import (
    check_fits_task,
    check_seq_len,
    is_multiple_choice,
    load_config,
    load_for_inference,
    load_tokenizer,
)
from obert.workflows.common import check_inputs, input_paths, log

# Used when no --task is given: varied real sentences, long and short, so padding is checked.
SAMPLE = [
    "a gripping, funny and moving film that never lets go",
    "it never takes off, and the plot is thin to the point of being invisible.",
    "the performances are fine",
    "What is the capital of France? Paris has been the capital since the tenth century.",
    "Profits rose 12 percent in the third quarter, the company said on Tuesday.",
    "no.",
    "If the weather holds, the match will be played on Sunday afternoon as planned.",
    "The cat sat on the mat while the dog slept by the fire.",
]


def check_rows(tokenizer, data: DataArgs | None, rows: int, max_seq_length: int,
               multiple_choice: bool = False) -> dict:
    """Tokenized check rows: the first ``rows`` of the task's dev split, or ``SAMPLE``
    (for a multiple-choice model, each sentence with the next two as its choices)."""
    if multiple_choice:
        return _choice_rows(tokenizer, data, rows, max_seq_length)
    if data is not None and data.spec.is_mc:
        raise ObertError(f"--task {data.spec.name} is multiple choice, but the model is not a "
                         "multiple-choice model: export a model fine-tuned on it")
    if data is not None and not data.spec.is_qa:
        dev = data.load("dev")
        cols = [c for c in data.spec.text_keys if c]
        dev = dev.select(range(min(rows, len(dev))))
        texts = [list(dev[c]) for c in cols]
        source = f"{len(dev)} {data.spec.name} dev rows"
    else:
        texts = [[SAMPLE[i % len(SAMPLE)] for i in range(rows)]]
        source = f"{rows} sample sentences"
    enc = tokenizer(*texts, padding=True, truncation=True, max_length=max_seq_length,
                    return_tensors="pt")
    log(f"checking on {source}")
    return dict(enc)


def _choice_rows(tokenizer, data: DataArgs | None, rows: int, max_seq_length: int) -> dict:
    """[rows, choices, tokens] check inputs for a multiple-choice model."""
    import datasets

    from obert.data.mc import ChoiceCollator, encode_choices

    if data is not None:
        if not data.spec.is_mc:
            raise ObertError(f"the model is a multiple-choice model: --task {data.spec.name} "
                             "has no choices; use commonsense_qa, winogrande or multiple_choice")
        dev = data.load("dev")
        dev = dev.select(range(min(rows, len(dev))))
        source = f"{len(dev)} {data.spec.name} dev rows"
    else:
        n = len(SAMPLE)
        dev = datasets.Dataset.from_dict({
            "stem": [SAMPLE[i % n] for i in range(rows)],
            "choices": [[SAMPLE[(i + 1) % n], SAMPLE[(i + 2) % n]] for i in range(rows)],
            "label": [0] * rows, "line": list(range(1, rows + 1))})
        source = f"{rows} sample sentences, each with two others as choices"
    enc = encode_choices(dev, tokenizer, max_seq_length).remove_columns(["labels"])
    log(f"checking on {source}")
    return ChoiceCollator(tokenizer)([enc[i] for i in range(len(enc))])


def run_export(model_name: str, output: str, int8: bool = False, data: DataArgs | None = None,
               rows: int = 32, max_seq_length: int = 128, tolerance: float | None = None,
               overwrite: bool = False) -> dict:
    from obert.runtime.export import export_onnx

    # --overwrite replaces only an ONNX file obert wrote, never an input
    path = check_output(output, overwrite, file=True, inputs=input_paths(model_name, data))
    if data is not None:
        check_inputs(model_name, data, max_seq_length)
    else:
        check_seq_len(load_config(model_name), max_seq_length)
    model = load_for_inference(model_name)
    tokenizer = load_tokenizer(model_name)
    plan = int8_plan(model, log=log) if int8 else None
    mc = is_multiple_choice(model)
    if data is not None and data.spec.is_mc == mc:  # (check_rows names a kind mismatch)
        check_fits_task(model.config, model_name, data.spec)  # checked on its rows: its head
    inputs = check_rows(tokenizer, data, rows, max_seq_length, mc)
    with writing(path):  # a full disk, ...: one line, no file (export_onnx removes its own)
        report = export_onnx(model, path, inputs, int8, tolerance=tolerance, plan=plan)
    trained = plan is not None and bool(plan.trained)
    log(f"wrote {path} ({report.size_mb:.1f} MB, {report.dtype}"
        + (f", {report.int8_layers} INT8 Linears, {report.int8_attention} INT8 attentions"
           if int8 else "")
        + (", trained scales" if trained else "")
        + f"): against {report.reference} on {report.rows} rows, largest logit difference "
        f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:g} x max(1, "
        f"{report.max_logit:.3g})), same label on {report.label_agreement:.1%}"
        + (f"; QAT's simulation differs by {report.simulation_diff:.3g}; ONNX Runtime's "
           f"default optimizations give {report.default_session_diff:.3g}, "
           "session.disable_quant_qdq=1 keeps obert's numbers" if int8 else ""))
    if plan is not None and plan.attention_note:
        log(f"attention stays fp32: {plan.attention_note}")
    return {**asdict(report), "trained_scales": trained}
