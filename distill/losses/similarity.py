"""Match each student embedding's similarity distribution over a bank of teacher embeddings (SEED, ICLR 2021).

For a sample with student embedding ``s`` and teacher embedding ``t`` (both L2-normalised), and a
bank ``Q`` of teacher embeddings of *other* training images, the teacher's distribution is
``p_t = softmax([t.t, t.Q] / tau)`` and the student's ``p_s = softmax([s.t, s.Q] / tau)``; the
term is the cross-entropy ``-sum p_t log p_s``, minus the teacher's own entropy so it is 0 when
the distributions agree (a KL divergence). A small ``tau`` puts the weight on the most similar
bank entries: the nearest impostors, where verification at low FAR is decided.

The bank is a FIFO queue of the teacher embeddings of earlier batches (no extra teacher passes),
kept in the module's state so a resumed run continues with it. Until the queue holds ``queue``
entries the term uses what it has (the current batch's other samples are always in it too).

Example::

    term = SimilarityLoss(temperature=0.05, queue=4096)
    loss = term(student_emb, teacher_emb)          # scalar; the bank then holds this batch's teacher rows
    value = similarity_loss(s, t, bank, 0.05)       # the pure function
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embedding import _check
from .registry import LOSS_TERMS


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor, bank: torch.Tensor,
                    temperature: float = 0.05) -> torch.Tensor:
    """KL(p_teacher || p_student) of the similarity distributions over ``[own teacher row, other batch rows,
    bank]``, averaged over the batch. ``student``, ``teacher``: ``(B, D)``; ``bank``: ``(K, D)`` teacher rows
    (any norm: all rows are L2-normalised here)."""
    _check(student, teacher)
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher.detach(), dim=1)
    keys = torch.cat([t, F.normalize(bank.detach().to(t), dim=1)]) if bank.numel() else t
    logit_t = t @ keys.T / temperature
    logit_s = s @ keys.T / temperature
    p_t = F.softmax(logit_t, dim=1)
    return (p_t * (F.log_softmax(logit_t, dim=1) - F.log_softmax(logit_s, dim=1))).sum(1).mean()


@LOSS_TERMS.register("similarity", description="match each student row's similarity distribution over a queue "
                                                "of teacher embeddings (SEED): weight on the nearest impostors; off by "
                                                "default (no difference in the 22-minute LFW lever, RESULTS.md)")
class SimilarityLoss(nn.Module):
    """Module form of :func:`similarity_loss` with its FIFO bank of teacher embeddings (config name ``similarity``).

    Args:
        temperature: softmax temperature of cosine similarities (smaller: sharper, nearest impostors only).
        queue: bank size (teacher rows of earlier batches).
    """

    def __init__(self, temperature: float = 0.05, queue: int = 4096) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if int(queue) < 0:
            raise ValueError(f"queue must be >= 0, got {queue}")
        self.temperature, self.size = float(temperature), int(queue)
        self.register_buffer("bank", torch.zeros(0, 0))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("head", torch.zeros((), dtype=torch.long))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """``(B, D), (B, D) -> ()``; then the batch's teacher rows enter the bank (training mode only)."""
        bank = self.bank[: int(self.filled)] if self.bank.numel() else self.bank
        value = similarity_loss(student, teacher, bank, self.temperature)
        if self.training and self.size:
            self._enqueue(F.normalize(teacher.detach().float(), dim=1))
        return value

    @torch.no_grad()
    def _enqueue(self, rows: torch.Tensor) -> None:
        if self.bank.shape != (self.size, rows.shape[1]):
            self.bank = rows.new_zeros(self.size, rows.shape[1])
            self.filled.zero_()
            self.head.zero_()
        rows = rows[-self.size:]
        idx = (int(self.head) + torch.arange(len(rows), device=rows.device)) % self.size
        self.bank[idx] = rows
        self.head.fill_((int(self.head) + len(rows)) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + len(rows)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # the bank's shape is only known once it was filled: take the saved one
        key = prefix + "bank"
        if key in state_dict:
            self.bank = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
