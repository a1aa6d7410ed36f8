"""Fine-tuning on a task with the Hugging Face Trainer: dense, sparse transfer (the start
model's zeros held as fixed masks), or the task head alone on a frozen encoder."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass

from transformers import PrinterCallback, Trainer, TrainingArguments

from obert.data.tasks import TaskSpec
from obert.data.tokenize import collator
from obert.errors import ObertError
from obert.finite import check_loss
from obert.models import has_cuda
from obert.pruning.masks import MaskSet
from obert.training.gradual import HoldMasks


@dataclass
class FinetuneConfig:
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    max_seq_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)


class FiniteLossTrainer(Trainer):
    """Trainer that stops at a training loss that is NaN or infinite: Trainer's own filter only
    keeps it out of the logged mean, while its step writes NaN into the weights."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            check_loss(out[0] if return_outputs else out, self.state.global_step + 1,
                       "nothing is written: fine-tune with a lower --lr")
        return out


def freeze_base(model) -> int:
    """Freeze the encoder and embeddings (``model.base_model``): only the task head trains.
    Returns the number of trainable weights left. A head tied to the embeddings (BERT's MLM
    decoder) stays frozen with them; its bias and transform train."""
    for p in model.base_model.parameters():
        p.requires_grad_(False)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n == 0:
        raise ObertError(f"{type(model).__name__} has no weights outside its encoder to train: "
                         "--head-only has nothing to fit")
    return n


def finetune(model, tokenizer, train_encoded, cfg: FinetuneConfig, quiet: bool = False,
             masks: MaskSet | None = None, task: TaskSpec | None = None) -> dict:
    """Train ``model`` in place (linear LR decay after warm-up); returns the training summary.

    With ``masks`` every pruned weight stays exactly 0 (sparse transfer). Weights with
    ``requires_grad`` off (``freeze_base``) are left out of the optimizer. ``task`` picks the
    collator (MLM masks its batches)."""
    with tempfile.TemporaryDirectory(prefix="obert-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr,
            per_device_train_batch_size=cfg.batch_size,
            warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of all steps
            weight_decay=cfg.weight_decay,
            lr_scheduler_type="linear",
            seed=cfg.seed,
            data_seed=cfg.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_steps=max(1, len(train_encoded) // cfg.batch_size // 10),
            report_to=[],
            disable_tqdm=quiet,
            log_level="error" if quiet else "warning",
            use_cpu=not has_cuda(),
        )
        trainer = FiniteLossTrainer(
            model=model,
            args=args,
            train_dataset=train_encoded,
            data_collator=collator(task, tokenizer),
            processing_class=tokenizer,
        )
        if quiet:
            trainer.remove_callback(PrinterCallback)
        if masks is None:
            out = trainer.train()
        else:
            trainer.add_callback(HoldMasks(masks))
            masks.attach()
            try:
                masks.apply()
                out = trainer.train()
            finally:
                masks.detach()
    return {"train_loss": out.training_loss, "steps": out.global_step, **out.metrics}

