"""Model cards: the ``README.md`` of every output folder, in the Hugging Face format.

``model_card`` is the one place the text is made: a YAML header that ``huggingface_hub``'s
``ModelCard`` reads back (base model, library, tags, datasets, metrics, license when known,
and a ``model-index`` with the dev metrics), then markdown on how the model was made (method,
sparsity and its pattern, layers, QAT, recipe, teacher, start model), its metrics and how to
run it fast. It reads nothing from disk: what it says comes from the folder's ``sparsity.json``
(``info``), its ``eval_results.json`` (``metrics``), its ``config.json`` (``model_config``)
and the start model's ancestry (``read_lineage``). ``write_card`` is what ``save_model`` calls.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from obert.data.tasks import TaskSpec, get_task
from obert.errors import ObertError

CARD_FILE = "README.md"

# task kind -> the Hugging Face task id (tag, pipeline tag, model-index task type)
TASK_TYPES = {"classification": "text-classification", "qa": "question-answering",
              "multiple_choice": "multiple-choice", "mlm": "fill-mask"}
TASK_NAMES = {"text-classification": "Text Classification",
              "question-answering": "Question Answering",
              "multiple-choice": "Multiple Choice", "fill-mask": "Fill-Mask"}
# the hub's pipeline tags among them (multiple choice has none)
PIPELINE_TAGS = ("text-classification", "question-answering", "fill-mask")
# transformers class suffix -> task kind, for folders whose sparsity.json names no task
ARCH_KINDS = {"ForSequenceClassification": "classification", "ForQuestionAnswering": "qa",
              "ForMultipleChoice": "multiple_choice", "ForMaskedLM": "mlm"}
AUTO_CLASSES = {"classification": "AutoModelForSequenceClassification",
                "qa": "AutoModelForQuestionAnswering",
                "multiple_choice": "AutoModelForMultipleChoice", "mlm": "AutoModelForMaskedLM"}
GLUE_DATASET = "nyu-mll/glue"
HUB_DATASETS = {"squad": "rajpurkar/squad"}  # multiple choice: the task's own hub_dataset
DATASET_NAMES = {"squad": "SQuAD v1.1", "commonsense_qa": "CommonsenseQA",
                 "winogrande": "WinoGrande", "multiple_choice": "multiple choice",
                 "mlm": "masked-language modelling"}
METRIC_NAMES = {"accuracy": "Accuracy", "f1": "F1", "exact_match": "Exact Match",
                "matthews_correlation": "Matthews Correlation", "pearson": "Pearson",
                "spearmanr": "Spearman", "perplexity": "Perplexity", "loss": "Loss"}
NOT_METRICS = {"n", "windows", "masked_tokens", "wall_s", "sparsity", "global_sparsity",
               "task", "split", "runtime", "kernels"}

# sparsity.json's method -> (short name, what was done)
METHODS = {
    "obert": ("one-shot oBERT",
              "pruned once, without retraining, by oBERT (the Optimal BERT Surgeon): weights "
              "removed by their OBS saliency from a block-diagonal empirical Fisher inverse, "
              "the survivors moved by the OBS update"),
    "magnitude": ("one-shot magnitude",
                  "pruned once, without retraining, by weight magnitude |w|"),
    "gradual-obert": ("gradual oBERT",
                      "pruned gradually during training by oBERT (OBS saliency and update "
                      "from a block-diagonal empirical Fisher inverse at each pruning step), "
                      "the pruned weights held at 0 after every optimizer step"),
    "gradual-magnitude": ("GMP★",
                          "pruned gradually during training by weight magnitude (GMP★, the "
                          "well-tuned gradual magnitude baseline), the pruned weights held at "
                          "0 after every optimizer step"),
    "dense-distill": ("dense fine-tune (recipe)",
                      "trained dense by a recipe, no pruning"),
    "sparse-transfer-distill": ("sparse transfer (recipe)",
                                "trained by a recipe with the start model's zero weights held "
                                "at exactly 0 (fixed masks)"),
    "dense-finetune": ("dense fine-tune", "fine-tuned, every weight trained"),
    "sparse-transfer": ("sparse transfer",
                        "fine-tuned with the start model's zero weights held at exactly 0 "
                        "(fixed masks)"),
    "head-only": ("head-only fine-tune", "the task head trained on the frozen encoder"),
    "drop-layers": ("drop-layers",
                    "a copy of the start model with a subset of its encoder layers, not "
                    "retrained"),
}
# sparsity.json's method -> what was done to the start model, for the card's first sentence
DID = {"obert": "pruned one-shot with oBERT", "magnitude": "pruned one-shot by magnitude",
       "gradual-obert": "pruned gradually with oBERT",
       "gradual-magnitude": "pruned gradually by magnitude (GMP★)",
       "dense-distill": "trained dense by a recipe",
       "sparse-transfer-distill": "trained by a recipe with its zeros fixed (sparse transfer)",
       "dense-finetune": "fine-tuned", "sparse-transfer": "fine-tuned with its zeros fixed "
       "(sparse transfer)", "head-only": "with a task head fitted on its frozen encoder",
       "drop-layers": "cut to fewer encoder layers"}
PRUNING_METHODS = ("obert", "magnitude", "gradual-obert", "gradual-magnitude")
PATTERNS = {"unstructured": "unstructured (single weights)",
            "block4": "4-block (groups of 4 consecutive weights along the input dimension, "
                      "what obert's INT8 sparse kernels skip)"}
SCOPES = {"global": "global (one ranking across all layers)",
          "layer": "per layer (each layer to the same sparsity)"}


def model_card(info: dict, metrics: dict | None, model_config: dict | None = None, *,
               name: str | None = None, lineage: list[dict] | None = None) -> str:
    """The README.md text of an output folder: a Hugging Face model card.

    ``info`` is its ``sparsity.json`` (any command's; ``{}`` for none), ``metrics`` its
    ``eval_results.json`` (or None), ``model_config`` its ``config.json`` as a dict, ``name``
    the folder as the reader knows it (used in the model-index and the commands), ``lineage``
    what ``read_lineage`` found above a local start model (the nearest hub id, a license)."""
    info, metrics, config = info or {}, metrics or {}, model_config or {}
    name = name or "model"
    c = _Facts(info, metrics, config, name, lineage or [])
    return "---\n" + c.header() + "---\n\n" + c.body()


def read_lineage(source: str | None, depth: int = 8) -> list[dict]:
    """The start models above an output, nearest first, while they are local folders: each
    ``{"model", "local", "method", "base_model", "license"}`` from its ``sparsity.json`` and its
    own card's header. Stops at a hub id (``local`` False) or a folder obert did not write."""
    chain: list[dict] = []
    seen: set[str] = set()
    while source and len(chain) < depth and source not in seen:
        seen.add(source)
        folder = Path(source)
        if not folder.is_dir():
            chain.append({"model": source, "local": False})
            break
        entry: dict = {"model": source, "local": True}
        entry.update(_card_meta(folder))
        try:
            up = json.loads((folder / "sparsity.json").read_text())
        except (OSError, ValueError):
            up = None
        chain.append(entry)
        if not isinstance(up, dict):
            break
        entry["method"] = up.get("method")
        source = up.get("source_model")
    return chain


def write_card(folder: Path, info: dict | None, metrics: dict | None,
               model_config: dict | None) -> None:
    """Write ``folder/README.md`` (``save_model`` calls it in the temporary folder, before the
    rename). A card that cannot be made costs a warning line, never the model."""
    try:
        info = info or {}
        text = model_card(info, metrics, model_config, name=display_name(folder),
                          lineage=read_lineage(info.get("source_model")))
    except Exception as e:  # the model is the output; its card must not lose it
        print(f"warning: no model card written ({type(e).__name__}: {e})", file=sys.stderr,
              flush=True)
        return
    (Path(folder) / CARD_FILE).write_text(text)


def display_name(folder: Path) -> str:
    """The output as the user named it: ``obert.io.atomic_output``'s temporary folder
    ``.NAME.tmp-PID-XXXX`` is NAME, a sub-folder of it NAME/SUB, any other folder its name."""
    folder = Path(folder)
    for path, sub in ((folder, ""), (folder.parent, f"/{folder.name}")):
        m = _TMP.fullmatch(path.name)
        if m:
            return m.group(1) + sub
    return folder.name


_TMP = re.compile(r"\.(.+)\.tmp-\d+-.*")


def _card_meta(folder: Path) -> dict:
    """license and base_model from a local folder's card header, when it has one."""
    path = folder / CARD_FILE
    if not path.is_file():
        return {}
    try:
        from huggingface_hub import metadata_load

        meta = metadata_load(path) or {}
    except Exception:  # a damaged or foreign card says nothing
        return {}
    base = meta.get("base_model")
    return {k: v for k, v in (("license", meta.get("license")),
                              ("base_model", base if isinstance(base, str) else None)) if v}


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _num(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _code(s) -> str:
    return f"`{s}`"


class _Facts:
    """What the card says, read once from the folder's files."""

    def __init__(self, info: dict, metrics: dict, config: dict, name: str,
                 lineage: list[dict]) -> None:
        self.info, self.metrics, self.config, self.name = info, metrics, config, name
        self.lineage = lineage
        self.method = info.get("method")
        self.settings = info.get("settings") or {}
        self.recipe = self.settings.get("recipe") if isinstance(self.settings, dict) else None
        self.data = info.get("data") or {}
        self.spec = self._task()
        self.kind = self.spec.kind if self.spec else self._arch_kind()
        self.task_type = TASK_TYPES.get(self.kind) if self.kind else None
        self.quant = info.get("quantization")
        self.source = info.get("source_model")
        self.teacher = self.settings.get("teacher") if isinstance(self.settings, dict) else None
        self.sparsity = info.get("global_sparsity")

    # -- what the files say ------------------------------------------------------------------
    def _task(self) -> TaskSpec | None:
        for task in (self.data.get("task"), self.metrics.get("task"),
                     self.config.get("finetuning_task")):
            if task:
                try:
                    return get_task(str(task))
                except ObertError:
                    continue
        return None

    def _arch_kind(self) -> str | None:
        for arch in self.config.get("architectures") or []:
            for suffix, kind in ARCH_KINDS.items():
                if str(arch).endswith(suffix):
                    return kind
        return None

    @property
    def pruned(self) -> bool:
        return (self.method in PRUNING_METHODS or "masks" in self.info
                or (self.sparsity or 0.0) >= 0.01)

    @property
    def base_model(self) -> str | None:
        """The start model when it is a hub id; for a local one, the nearest hub model above
        it (its chain of sparsity.json files, or its own card's base_model)."""
        for entry in self.lineage:
            if not entry.get("local"):
                return entry["model"]
            if entry.get("base_model"):
                return entry["base_model"]
        if self.source and not self.lineage and not os.path.isabs(self.source) \
                and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", self.source):
            return self.source  # not looked up (no lineage given): taken as a hub id
        return None

    @property
    def license(self) -> str | None:
        return next((e["license"] for e in self.lineage if e.get("license")), None)

    def mask(self) -> str | None:
        if self.method in ("obert", "magnitude"):
            return self.settings.get("mask")
        pruning = (self.recipe or {}).get("pruning") if isinstance(self.recipe, dict) else None
        return pruning.get("mask") if isinstance(pruning, dict) else None

    def scope(self) -> str | None:
        if self.method in ("obert", "magnitude"):
            return self.settings.get("scope")
        pruning = (self.recipe or {}).get("pruning") if isinstance(self.recipe, dict) else None
        return pruning.get("scope") if isinstance(pruning, dict) else None

    def kept_layers(self) -> tuple[list[int] | None, int | None, str | None]:
        """(kept indices, layers before, why) when layers were dropped."""
        layers = self.info.get("layers")
        if isinstance(layers, dict) and layers.get("kept") is not None:
            return layers["kept"], layers.get("from"), layers.get("rule")
        keep = ((self.recipe or {}).get("layers") or {}).get("keep") if isinstance(
            self.recipe, dict) else None
        return (keep, None, "the recipe's layers.keep") if keep else (None, None, None)

    def metric_items(self) -> list[tuple[str, float]]:
        names = (self.spec.metrics if self.spec else
                 [k for k in self.metrics if k not in NOT_METRICS])
        return [(k, float(self.metrics[k])) for k in names
                if isinstance(self.metrics.get(k), (int, float))
                and not isinstance(self.metrics.get(k), bool)]

    def datasets(self) -> list[str]:
        """Hub dataset ids, or the local files as given."""
        files = [f for f in (self.data.get("train_file"), self.data.get("validation_file")) if f]
        if files:
            return list(dict.fromkeys(files))
        if self.spec is None:
            return []
        if self.spec.kind == "classification":
            return [GLUE_DATASET]
        if self.spec.name in HUB_DATASETS:
            return [HUB_DATASETS[self.spec.name]]
        if self.spec.hub_dataset:
            return [self.spec.hub_dataset]
        if self.spec.is_mlm and self.data.get("dataset"):
            return [self.data["dataset"]]
        return []

    def dataset_label(self) -> str:
        if self.spec is None:
            return "its task"
        if self.spec.kind == "classification":
            return f"GLUE {self.spec.glue_dir or self.spec.name}"
        if self.spec.is_mlm and self.data.get("dataset"):
            return f"{self.data['dataset']} (masked-language modelling)"
        return DATASET_NAMES.get(self.spec.name, self.spec.name)

    def data_where(self) -> str | None:
        d = self.data
        if d.get("split"):
            return d["split"]
        files = [f"{k.split('_')[0]} {_code(d[k])}" for k in ("train_file", "validation_file")
                 if d.get(k)]
        if files:
            return ", ".join(files)
        if d.get("data_dir"):
            return f"the local folder {_code(d['data_dir'])}"
        if d.get("dataset"):
            return f"the hub dataset {_code(d['dataset'])}"
        return "the Hugging Face hub" if d else None

    # -- the header ---------------------------------------------------------------------------
    def tags(self) -> list[str]:
        tags = ["obert"]
        if self.pruned:
            tags += ["pruned", "sparse"]
        if self.mask() == "block4":
            tags.append("block-sparse")
        if self.method in ("sparse-transfer", "sparse-transfer-distill"):
            tags.append("sparse-transfer")
        if self.quant:
            tags += ["int8", "quantization-aware-training"]
        if self.teacher:
            tags.append("knowledge-distillation")
        if self.kept_layers()[0] is not None:
            tags.append("layer-dropping")
        if self.task_type:
            tags.append(self.task_type)
        if self.config.get("model_type"):
            tags.append(str(self.config["model_type"]))
        return list(dict.fromkeys(tags))

    def eval_results(self) -> list:
        from huggingface_hub import EvalResult

        items = self.metric_items()
        if not items:
            return []
        datasets = self.datasets()
        dtype = datasets[-1] if datasets else self.dataset_label()
        split = self.metrics.get("split", "dev")
        if self.spec is not None:
            split = self.spec.hub_splits.get(split, split)
        config = None
        if self.spec is not None and not self.data.get("validation_file"):
            config = (self.data.get("dataset_config") if self.spec.is_mc else None) or \
                self.spec.hub_config or None
        task_type = self.task_type or "other"
        return [EvalResult(task_type=task_type, task_name=TASK_NAMES.get(task_type),
                           dataset_type=dtype, dataset_name=self.dataset_label(),
                           dataset_config=config, dataset_split=split, metric_type=k,
                           metric_value=v, metric_name=METRIC_NAMES.get(k, k))
                for k, v in items]

    def header(self) -> str:
        from huggingface_hub import ModelCardData

        results = self.eval_results()
        data = ModelCardData(
            base_model=self.base_model, library_name="transformers", license=self.license,
            tags=self.tags(), datasets=self.datasets() or None,
            metrics=[k for k, _ in self.metric_items()] or None,
            pipeline_tag=self.task_type if self.task_type in PIPELINE_TAGS else None,
            model_name=self.name if results else None, eval_results=results or None)
        return data.to_yaml() + "\n"

    # -- the markdown -------------------------------------------------------------------------
    def body(self) -> str:
        parts = [f"# {self.name}\n", self.summary() + "\n", self.facts_table(),
                 self.results(), self.how_made(), self.run_fast(), self.files()]
        version = self.info.get("obert_version")
        parts.append(f"---\n\nMade with obert {version or ''}".rstrip() + ": the Optimal "
                     "BERT Surgeon and well-tuned gradual magnitude pruning for BERT models.\n")
        return "\n".join(p for p in parts if p)

    def method_name(self) -> str:
        return METHODS.get(self.method, (self.method or "saved by obert", ""))[0]

    def summary(self) -> str:
        """One sentence: what was done to which model, on what, with what result."""
        subject = _code(self.source) if self.source else "This model"
        did = DID.get(self.method, f"saved by obert ({self.method})" if self.method else
                      "saved by obert")
        task = f" on {self.dataset_label()}" if self.spec and self.method != "drop-layers" else ""
        bits = []
        if self.sparsity is not None and self.pruned:
            pattern = {"block4": " in 4-blocks", "unstructured": " (unstructured)"}.get(
                self.mask() or "", "")
            bits.append(f"{_pct(self.sparsity)} of its prunable weights are zero{pattern}")
        kept, before, _ = self.kept_layers()
        if kept is not None:
            bits.append(f"{len(kept)} encoder layers" + (f" of {before}" if before else ""))
        if self.quant:
            bits.append("INT8 quantization-aware trained")
        return f"{subject} {did}{task}" + (": " + "; ".join(bits) if bits else "") + "."

    def facts_table(self) -> str:
        rows = [("Method", self.method_name())]
        if self.source:
            rows.append(("Start model", _code(self.source)))
        if self.spec:
            rows.append(("Task", f"{self.dataset_label()} ({TASK_NAMES.get(self.task_type, '')})"))
        if self.sparsity is not None:
            pattern = PATTERNS.get(self.mask() or "", "")
            pattern = pattern.split(" (")[0] if pattern else (
                "the start model's zeros" if "masks" in self.info else "")
            rows.append(("Sparsity", _pct(self.sparsity) + (f", {pattern}" if pattern else "")))
        n_layers = self.config.get("num_hidden_layers")
        if n_layers is not None:
            rows.append(("Encoder layers", str(n_layers)))
        rows.append(("Weights", "fp32 values on an INT8 grid (QAT)" if self.quant else "fp32"))
        for k, v in self.metric_items()[:2]:
            rows.append((f"Dev {METRIC_NAMES.get(k, k).lower()}", _num(v)))
        return "| | |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)

    def results(self) -> str:
        items = self.metric_items()
        if not items:
            return ("## Results\n\nNo dev metrics were computed for this folder: score it with "
                    f"`{self.evaluate_cmd('pytorch')}`.\n")
        n = self.metrics.get("n")
        split = self.metrics.get("split", "dev")
        on = f"on the {split} split of {self.dataset_label()}" + (f" ({n:,} rows)" if n else "")
        lines = ["## Results\n", f"Scored {on}" + (
            ", with INT8 fake quantization (the numbers obert's INT8 kernels compute)"
            if self.quant else "") + ".\n",
            "| Metric | Value |", "|---|---|"]
        lines += [f"| {METRIC_NAMES.get(k, k)} | {_num(v)} |" for k, v in items]
        return "\n".join(lines) + "\n"

    def how_made(self) -> str:
        out = ["## How it was made\n"]
        desc = METHODS.get(self.method, (None, None))[1]
        if self.method:
            out.append(f"- **Method**: {self.method_name()} (`{self.method}`)"
                       + (f": {desc}." if desc else "."))
        if self.source:
            out.append(f"- **Start model**: {_code(self.source)}" + self._ancestry() + ".")
        if self.teacher:
            dist = ((self.recipe or {}).get("distillation") or {}) if isinstance(
                self.recipe, dict) else {}
            kd = (f" (hardness {dist['hardness']:g}, temperature {dist['temperature']:g})"
                  if "hardness" in dist and "temperature" in dist else "")
            out.append(f"- **Teacher** (knowledge distillation): {_code(self.teacher)}{kd}.")
        if self.data:
            out.append(f"- **Data**: {self.data_line()}.")
        if self.sparsity is not None:
            out.append(f"- **Sparsity**: {self.sparsity_line()}.")
        pattern = PATTERNS.get(self.mask() or "")
        if pattern:
            scope = SCOPES.get(self.scope() or "")
            out.append(f"- **Pattern**: {pattern}" + (f"; ranking {scope}" if scope else "")
                       + ".")
        elif "masks" in self.info:
            out.append("- **Pattern**: the start model's zeros, held fixed as masks"
                       + self._upstream() + ".")
        kept, before, rule = self.kept_layers()
        if kept is not None:
            out.append(f"- **Layers kept**: {kept}" + (f" of {before}" if before else "")
                       + (f" ({rule})" if rule else "") + ".")
        elif self.config.get("num_hidden_layers"):
            out.append(f"- **Layers**: {self.config['num_hidden_layers']} encoder layers, "
                       "as the start model has.")
        if self.quant:
            out.append(f"- **INT8 QAT**: {self.quant_line()}.")
        steps = self.info.get("pruning_steps") or []
        if steps:
            out.append(f"- **Pruning steps**: {len(steps)}, at optimizer steps "
                       f"{steps[0]['step']}–{steps[-1]['step']}, from "
                       f"{_pct(steps[0]['sparsity'])} to {_pct(steps[-1]['sparsity'])}.")
        train = self.info.get("train") or {}
        wall = train.get("wall_s", self.info.get("wall_s"))
        if train.get("steps") is not None or wall is not None:
            bits = []
            if train.get("steps") is not None:
                bits.append(f"{train['steps']:,} optimizer steps")
            if isinstance(train.get("train_loss"), (int, float)):
                bits.append(f"mean training loss {train['train_loss']:.4f}")
            if wall is not None:
                bits.append(f"{wall:,.0f} s wall time")
            out.append(f"- **Run**: {', '.join(bits)}.")
        text = "\n".join(out) + "\n"
        for block in (self.per_layer(), self.steps_table(), self.recipe_block()):
            if block:
                text += "\n" + block
        return text

    def _ancestry(self) -> str:
        """How a local start model came about: ``(a dense fine-tune by obert, of `x` ← `y`;
        license L)``, from ``read_lineage``."""
        first, above = (self.lineage[0], self.lineage[1:]) if self.lineage else ({}, [])
        bits = []
        if first.get("method"):
            short = METHODS.get(first["method"], (first["method"],))[0]
            bits.append(f"a {short} by obert"
                        + (" of " + " ← ".join(_code(e["model"]) for e in above) if above else ""))
        if self.license:
            bits.append(f"license {self.license}")
        return f" ({'; '.join(bits)})" if bits else ""

    def _upstream(self) -> str:
        masks = self.info.get("masks") or {}
        up = masks.get("upstream") or {}
        if not up.get("method"):
            return ""
        return (f" (made by {METHODS.get(up['method'], (up['method'],))[0]}"
                + (f" from {_code(up['source_model'])}" if up.get("source_model") else "") + ")")

    def data_line(self) -> str:
        bits = [self.dataset_label()]
        where = self.data_where()
        if where:
            bits.append(f"read from {where}")
        if self.data.get("max_train_samples"):
            bits.append(f"a {self.data['max_train_samples']:,}-row subset of train "
                        f"(seed {self.data.get('seed')})")
        if self.method in ("obert",) and self.settings.get("fisher"):
            f = self.settings["fisher"]
            bits.append(f"the Fisher from m = {f.get('num_grads')} gradients of "
                        f"{f.get('grad_batch_size')} rows, block size "
                        f"{self.settings.get('fisher_block_size', f.get('block_size'))}, "
                        f"damp {f.get('damp')}")
        return "; ".join(bits)

    def sparsity_line(self) -> str:
        n, z = self.info.get("num_weights"), self.info.get("num_zeros")
        what = self._targets()
        line = f"{_pct(self.sparsity)} global"
        if n:
            line += f" ({z:,} of {n:,} weights zero" + (f", over {what}" if what else "") + ")"
        target = self.settings.get("sparsity") if isinstance(self.settings, dict) else None
        if target is None and isinstance(self.recipe, dict):
            target = (self.recipe.get("pruning") or {}).get("final_sparsity")
        if target is not None:
            line += f"; target {_pct(target)}"
        return line

    def _targets(self) -> str:
        names = list(self.info.get("tensors") or {})
        if not names:
            return ""
        parts = ["the encoder's Linear layers"]
        if any("embeddings" in n for n in names):
            parts.append("the embedding tables")
        if any(_part(n) == "head" for n in names):
            parts.append("the pooler/classifier")
        return ", ".join(parts)

    def quant_line(self) -> str:
        q = self.quant
        bits = [q.get("scheme", "int8")]
        if q.get("epochs") is not None:
            bits.append(f"{q['epochs']:g} epochs with the masks fixed"
                        + (f", from optimizer step {q['qat_start_step']}"
                           if q.get("qat_start_step") is not None else ""))
        if q.get("layers"):
            bits.append(f"{len(q['layers'])} Linears, their trained per-row scales in "
                        f"`{q.get('file', 'quantization.safetensors')}`")
        if q.get("weights"):
            bits.append(f"weights stored as {q['weights']}")
        return "; ".join(bits)

    def per_layer(self) -> str:
        tensors = self.info.get("tensors") or {}
        if not tensors:
            return ""
        groups: dict[str, list[int]] = {}
        for name, t in tensors.items():
            total = 1
            for d in t.get("shape") or []:
                total *= int(d)
            g = groups.setdefault(_part(name), [0, 0, 0])
            g[0] += int(t.get("zeros", 0))
            g[1] += total
            g[2] += 1

        def order(k: str):
            m = re.fullmatch(r"layer (\d+)", k)
            return (0, "", 0) if k == "embeddings" else (1, "", int(m.group(1))) if m else (
                2, k, 0)

        rows = [f"| {k} | {g[2]} | {g[1]:,} | {_pct(g[0] / g[1] if g[1] else 0.0)} |"
                for k, g in sorted(groups.items(), key=lambda kv: order(kv[0]))]
        return ("<details>\n<summary>Sparsity per layer</summary>\n\n"
                "| Part | Tensors | Weights | Sparsity |\n|---|---|---|---|\n"
                + "\n".join(rows) + "\n\nPer tensor: `sparsity.json`.\n\n</details>\n")

    def steps_table(self) -> str:
        steps = self.info.get("pruning_steps") or []
        if not steps:
            return ""
        rows = "\n".join(f"| {s.get('step')} | {_pct(s.get('target', 0.0))} | "
                         f"{_pct(s.get('sparsity', 0.0))} |" for s in steps)
        return ("<details>\n<summary>Pruning steps</summary>\n\n"
                "| Optimizer step | Target | Sparsity |\n|---|---|---|\n" + rows
                + "\n\n</details>\n")

    def recipe_block(self) -> str:
        import yaml

        if isinstance(self.recipe, dict):
            what, body = "Recipe", self.recipe
        elif self.settings:
            what, body = "Settings", self.settings
        else:
            return ""
        text = yaml.safe_dump(json.loads(json.dumps(body)), sort_keys=False,
                              allow_unicode=True).rstrip()
        return (f"<details>\n<summary>{what} (YAML)</summary>\n\n```yaml\n{text}\n```\n\n"
                "</details>\n")

    # -- running it -------------------------------------------------------------------------
    def evaluate_cmd(self, runtime: str) -> str:
        task = self.spec.name if self.spec else "TASK"
        cmd = f"obert evaluate --model {self.name} --task {task}"
        d = self.data
        if d.get("split_articles") is not None:
            cmd += f" --data-dir {d.get('data_dir') or 'DATA_DIR'} --split-articles " \
                   f"{d['split_articles']}"
        elif d.get("validation_file"):
            cmd += f" --validation-file {d['validation_file']}"
        elif d.get("data_dir"):
            cmd += f" --data-dir {d['data_dir']}"
        elif d.get("dataset"):
            cmd += f" --dataset {d['dataset']}"
        if self.spec is not None and self.spec.is_mc and d.get("dataset_config"):
            cmd += f" --dataset-config {d['dataset_config']}"
        return cmd + (f" --runtime {runtime}" if runtime != "pytorch" else "")

    def run_fast(self) -> str:
        runtime = "int8" if self.quant or self.mask() == "block4" else "fp32"
        if self.quant:
            why = ("`int8` runs the encoder's Linears on obert's INT8 kernels with the scales "
                   "QAT trained (`quantization.safetensors`): the numbers it was scored with")
        else:
            why = ("`fp32` keeps PyTorch's numbers to float rounding (sparse layers on "
                   "obert's sparse kernels); `int8` rounds the weights per row on load and is "
                   "faster, 4-block sparsity most: check its score with `--runtime int8` first")
        task = self.task_type or "text-classification"
        auto = AUTO_CLASSES.get(self.kind or "", "AutoModel")
        arch = (self.config.get("architectures") or [None])[0]
        example = json.dumps(self.example_input(), ensure_ascii=False)
        return f"""## Run it fast

On CPU with obert's sparse (and INT8) kernels; {why}.

```bash
obert serve --model {self.name} --runtime {runtime}   # POST /predict, /docs
curl -s localhost:8000/predict -H 'content-type: application/json' -d '{{"inputs": {example}}}'
{self.evaluate_cmd(runtime)}
```

```python
import obert

pipe = obert.pipeline("{task}", "{self.name}", runtime="{runtime}")
print(pipe({example}))
```

It is also a plain Hugging Face folder: `transformers.{auto}.from_pretrained("{self.name}")`
loads it without obert{f" (as `{arch}`)" if arch else ""}, the zeros stored as zeros.
"""

    def example_input(self):
        """One input of the model's kind, as ``obert.pipeline`` and ``obert serve`` take it."""
        if self.kind == "qa":
            return {"question": "Who wrote the letter?",
                    "context": "The letter was written by Ada in 1843."}
        if self.kind == "multiple_choice":
            return {"question": "Where would you keep milk cold?",
                    "choices": ["fridge", "oven", "shelf", "car", "garden"]}
        if self.kind == "mlm":
            mt = str(self.config.get("model_type", ""))
            mask = "<mask>" if "roberta" in mt or mt in ("camembert", "longformer") else "[MASK]"
            return f"Paris is the {mask} of France."
        if self.spec is not None and len(self.spec.text_keys) == 2:
            return {"text": "The cat sat on the mat.", "text_pair": "A cat was on the mat."}
        return "A gripping, funny and moving film."

    def files(self) -> str:
        rows = [("`model.safetensors`, `config.json`, tokenizer files", "the model")]
        if self.info:
            rows.append(("`sparsity.json`", "per-tensor and global sparsity, the method, every "
                         "setting, where the model and data came from"))
        if self.metrics:
            rows.append(("`eval_results.json`", "the dev metrics above"))
        if self.quant:
            rows.append((f"`{self.quant.get('file', 'quantization.safetensors')}`",
                         "QAT's per-row INT8 weight scales"))
        if self.method and self.method.startswith(("gradual", "dense-distill",
                                                   "sparse-transfer-distill")):
            rows.append(("`metrics.jsonl`, `plots/`", "the training run, step by step"))
        return "## Files\n\n" + "".join(f"- {a}: {b}.\n" for a, b in rows)


def _part(tensor: str) -> str:
    """The part of the model a weight belongs to: ``layer N``, ``embeddings`` or ``head``."""
    m = re.search(r"\.layers?\.(\d+)\.", tensor)
    if m:
        return f"layer {int(m.group(1))}"
    return "embeddings" if "embeddings" in tensor else "head"


__all__ = ["CARD_FILE", "display_name", "model_card", "read_lineage", "write_card"]
