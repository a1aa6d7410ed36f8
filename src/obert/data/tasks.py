"""The task registry: text columns, labels, splits and metrics of each task.

GLUE column names follow the Hugging Face ``glue`` dataset (the hub's parquet layout). ``tsv_*``
fields describe the official GLUE TSV layout, where names and label values differ. Multiple
choice tasks (CommonsenseQA, WinoGrande, any set in the generic form) are read into one layout
by ``obert.data.mc``: a ``stem``, a list of ``choices`` and the index of the right one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from obert.errors import ObertError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    hub_config: str
    text_keys: tuple[str, ...]
    num_labels: int  # 1 means regression
    metrics: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] = ()
    glue_dir: str = ""
    # split name -> TSV file name in the GLUE layout
    tsv_files: dict[str, str] = field(default_factory=dict)
    # split name -> hub split name
    hub_splits: dict[str, str] = field(default_factory=dict)
    # TSV column -> canonical column; the label column maps to "label"
    tsv_columns: dict[str, str] = field(default_factory=dict)
    # TSV files without a header line: the canonical names of their columns, by position
    tsv_no_header: tuple[str, ...] = ()
    # TSV label strings -> ids (empty: labels are numbers already)
    tsv_label_map: dict[str, int] = field(default_factory=dict)
    # "classification" (GLUE, regression included), "qa" (extractive, SQuAD), "mlm"
    # (masked-language modelling on a text corpus, see ``obert.data.mlm``) or
    # "multiple_choice" (one score per choice, see ``obert.data.mc``; num_labels is the number
    # of choices, 0 when the data decides)
    kind: str = "classification"
    # multiple choice: the hub dataset id and its default config
    hub_dataset: str = ""

    @property
    def is_qa(self) -> bool:
        return self.kind == "qa"

    @property
    def is_mlm(self) -> bool:
        return self.kind == "mlm"

    @property
    def is_mc(self) -> bool:
        return self.kind == "multiple_choice"

    @property
    def default_max_length(self) -> int:
        return 384 if self.is_qa else 64 if self.is_mc else 128

    @property
    def grad_batch_size(self) -> int:
        """Rows per Fisher gradient: the papers' 16 (GLUE, MLM), 8 for SQuAD's 384 tokens."""
        return 8 if self.is_qa else 16

    @property
    def is_regression(self) -> bool:
        return self.kind == "classification" and self.num_labels == 1

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.hub_splits)


_STD_SPLITS = {"train": "train", "dev": "validation", "test": "test"}
_STD_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_ENTAIL2 = {"entailment": 0, "not_entailment": 1}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "sst2", "sst2", ("sentence",), 2, ("accuracy",), "accuracy",
            ("negative", "positive"), "SST-2", _STD_FILES, _STD_SPLITS,
            {"sentence": "sentence", "label": "label"},
        ),
        TaskSpec(
            "mrpc", "mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "f1",
            ("not_equivalent", "equivalent"), "MRPC", _STD_FILES, _STD_SPLITS,
            {"#1 String": "sentence1", "#2 String": "sentence2", "Quality": "label"},
        ),
        TaskSpec(
            "rte", "rte", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy",
            ("entailment", "not_entailment"), "RTE", _STD_FILES, _STD_SPLITS,
            {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
            tsv_label_map=_ENTAIL2,
        ),
        TaskSpec(
            "qnli", "qnli", ("question", "sentence"), 2, ("accuracy",), "accuracy",
            ("entailment", "not_entailment"), "QNLI", _STD_FILES, _STD_SPLITS,
            {"question": "question", "sentence": "sentence", "label": "label"},
            tsv_label_map=_ENTAIL2,
        ),
        TaskSpec(
            "cola", "cola", ("sentence",), 2, ("matthews_correlation", "accuracy"),
            "matthews_correlation", ("unacceptable", "acceptable"), "CoLA", _STD_FILES,
            _STD_SPLITS, {"sentence": "sentence", "label": "label"},
            # CoLA's train/dev TSVs have no header: source, label, original label, sentence.
            tsv_no_header=("source", "label", "original_label", "sentence"),
        ),
        TaskSpec(
            "stsb", "stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"),
            "pearson", (), "STS-B", _STD_FILES, _STD_SPLITS,
            {"sentence1": "sentence1", "sentence2": "sentence2", "score": "label"},
        ),
        TaskSpec(
            "mnli", "mnli", ("premise", "hypothesis"), 3, ("accuracy",), "accuracy",
            ("entailment", "neutral", "contradiction"), "MNLI",
            {"train": "train.tsv", "dev": "dev_matched.tsv", "dev_mm": "dev_mismatched.tsv",
             "test": "test_matched.tsv", "test_mm": "test_mismatched.tsv"},
            {"train": "train", "dev": "validation_matched", "dev_mm": "validation_mismatched",
             "test": "test_matched", "test_mm": "test_mismatched"},
            {"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
            tsv_label_map={"entailment": 0, "neutral": 1, "contradiction": 2},
        ),
        TaskSpec(
            "qqp", "qqp", ("question1", "question2"), 2, ("accuracy", "f1"), "accuracy",
            ("not_duplicate", "duplicate"), "QQP", _STD_FILES, _STD_SPLITS,
            {"question1": "question1", "question2": "question2", "is_duplicate": "label"},
        ),
        TaskSpec(
            "squad", "squad", ("question", "context"), 0, ("exact_match", "f1"), "f1", (),
            "squad", {"train": "train-v1.1.json", "dev": "dev-v1.1.json"},
            {"train": "train", "dev": "validation"}, kind="qa",
        ),
        # Multiple choice: accuracy over the choices (chance is 1 / choices).
        TaskSpec(
            "commonsense_qa", "", ("stem", "choices"), 5, ("accuracy",), "accuracy",
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            kind="multiple_choice", hub_dataset="tau/commonsense_qa",
        ),
        TaskSpec(
            "winogrande", "winogrande_xl", ("stem", "choices"), 2, ("accuracy",), "accuracy",
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            kind="multiple_choice", hub_dataset="allenai/winogrande",
        ),
        TaskSpec(
            "multiple_choice", "", ("stem", "choices"), 0, ("accuracy",), "accuracy",
            hub_splits={"train": "train", "dev": "validation", "test": "test"},
            kind="multiple_choice",
        ),
        # Any text: masked-token accuracy, perplexity and loss over the masked positions.
        TaskSpec(
            "mlm", "", ("text",), 0, ("accuracy", "perplexity", "loss"), "accuracy",
            hub_splits={"train": "train", "dev": "validation"}, kind="mlm",
        ),
    ]
}

_ALIASES = {"squad1": "squad", "squad_v1": "squad", "sst-2": "sst2", "sts-b": "stsb",
            "mnli-m": "mnli", "mnli_matched": "mnli", "csqa": "commonsense_qa",
            "commonsenseqa": "commonsense_qa", "commonsense-qa": "commonsense_qa",
            "multiple-choice": "multiple_choice", "mc": "multiple_choice"}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name (case-insensitive; GLUE folder names such as SST-2 also work)."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ObertError(
            f"unknown task {name!r}: choose one of {', '.join(sorted(TASKS))}"
        )
    return TASKS[key]
