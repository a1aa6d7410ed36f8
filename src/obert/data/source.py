"""Where a task's data comes from: a local folder, explicit files, a hub dataset, or an article
split of SQuAD's dev file (``DataArgs``, what every command's data flags become)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import datasets

from obert.data.checks import NoData, check_split
from obert.data.glue import load_split, subsample
from obert.data.tasks import TaskSpec, get_task
from obert.errors import ObertError


@dataclass
class DataArgs:
    """Where a task's data comes from: a local folder, explicit files, or the hub."""

    task: str
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    max_train_samples: int | None = None
    seed: int = 42
    doc_stride: int = 128  # QA: overlap of the windows over a long context
    split_articles: int | None = None  # QA: train on dev minus its last N articles, test on them
    dataset: str | None = None  # MLM: a hub corpus (e.g. wikipedia) instead of text files
    dataset_config: str | None = None  # MLM: the corpus's config; WinoGrande: its size
    streaming: bool = False  # MLM: read only the --max-train-samples documents used
    # splits read so far, by split and settings: ``check`` reads the files, ``load`` reuses them
    _loaded: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)

    def check(self) -> None:
        """Read every split a file was named for, and the dev split of a --data-dir when it
        has one (their rows checked by ``obert.data.schema``), so that a bad row, a dev
        file's too, is refused before any model is loaded, not after training."""
        for split, file in (("train", self.train_file), ("dev", self.validation_file)):
            if file is not None:
                self.load(split)
        if self.validation_file is None and self.data_dir is not None and not self.spec.is_mlm:
            try:
                self.load("dev")
            except NoData:  # no dev split: the commands that need one say so themselves
                pass

    def load(self, split: str) -> datasets.Dataset:
        """The rows of ``split``, checked (each read once per settings)."""
        key = (split, *(getattr(self, f.name) for f in fields(self) if f.init))
        if key not in self._loaded:
            self._loaded[key] = self._read(split)
        return self._loaded[key]

    def _read(self, split: str) -> datasets.Dataset:
        if self.spec.is_mlm:
            return self._load_text(split)
        if self.dataset is not None or self.streaming:
            raise ObertError(f"--dataset and --streaming are for --task mlm; {self.spec.name} "
                             "reads --data-dir, --train-file/--validation-file or the hub's glue")
        if self.split_articles is not None:
            from obert.data.qa import split_articles

            if not self.spec.is_qa:
                raise ObertError("--split-articles is for --task squad only")
            if split not in ("train", "dev"):
                raise ObertError(f"with --split-articles the splits are train and dev, not {split}")
            key = ("whole dev", self.data_dir, self.validation_file)  # both splits' source
            if key not in self._loaded:
                self._loaded[key] = load_split(self.spec, "dev", self.data_dir,
                                               self.validation_file)
            ds = split_articles(self._loaded[key], self.split_articles)[
                0 if split == "train" else 1]
        else:
            file = {"train": self.train_file, "dev": self.validation_file}.get(split)
            ds = load_split(self.spec, split, self.data_dir, file,
                            self.dataset_config if self.spec.is_mc else None)
        if split == "train":
            ds = subsample(ds, self.max_train_samples, self.seed)
        return check_split(ds, self.spec, split, self.where(split))

    def _load_text(self, split: str) -> datasets.Dataset:
        """An MLM corpus split: a ``text`` column, one document per row."""
        from obert.data.mlm import load_corpus

        if split not in ("train", "dev"):
            raise ObertError(f"the mlm task has a train and a dev split, not {split}")
        file = {"train": self.train_file, "dev": self.validation_file}[split]
        ds = load_corpus(split, file, None if file else self.dataset, self.dataset_config,
                         self.streaming, self.max_train_samples)
        return subsample(ds, self.max_train_samples, self.seed) if split == "train" else ds

    def where(self, split: str) -> str:
        """Where a split comes from, in the words of the flags that chose it."""
        file = {"train": self.train_file, "dev": self.validation_file}.get(split)
        if self.split_articles is not None:
            return f"--split-articles {self.split_articles} of the dev file"
        if self.dataset and not file:
            return f"the hub dataset {self.dataset}"
        return file or self.data_dir or "the Hugging Face hub"

    def describe(self) -> dict:
        out = {"task": self.spec.name, "data_dir": self.data_dir, "train_file": self.train_file,
               "validation_file": self.validation_file,
               "max_train_samples": self.max_train_samples, "seed": self.seed}
        if self.spec.is_mlm:
            out.update(dataset=self.dataset, dataset_config=self.dataset_config,
                       streaming=self.streaming)
        if self.spec.is_mc and self.dataset_config:
            out["dataset_config"] = self.dataset_config
        if self.spec.is_qa:
            out["doc_stride"] = self.doc_stride
            out["split_articles"] = self.split_articles
            if self.split_articles is not None:
                out["split"] = (f"article split of the dev file: train = all but its last "
                                f"{self.split_articles} articles, dev = those {self.split_articles}")
        return out
