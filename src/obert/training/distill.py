"""Knowledge distillation losses (PAPER.md §2, "distillation"). Tensors in, a scalar out."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch.

    The T² keeps the gradient scale independent of T (Hinton et al.). For a regression head
    (one output) it is the squared error to the teacher's score, and T does not apply.
    """
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def distill_loss(
    task_loss: Tensor | None, student_logits: Tensor, teacher_logits: Tensor,
    hardness: float, temperature: float,
) -> Tensor:
    """hardness·KD + (1 − hardness)·task loss; hardness 1.0 is pure distillation."""
    kd = kd_loss(student_logits, teacher_logits, temperature)
    if hardness >= 1.0 or task_loss is None:
        return kd
    return hardness * kd + (1.0 - hardness) * task_loss


IGNORE = -100  # the label of a position that is not scored (Hugging Face's convention)


def token_kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                  hardness: float, temperature: float, task_loss: Tensor | None) -> Tensor:
    """KD for token-level logits ``[batch, length, vocab]`` (MLM): ``distill_loss`` over the
    scored positions only (``labels`` ≠ −100, the masked tokens), each position one row, so
    the KL is averaged over the masked tokens of the batch."""
    keep = labels != IGNORE
    return distill_loss(task_loss, student_logits[keep], teacher_logits[keep], hardness,
                        temperature)
