"""Distillation losses: stage-1 sublayer MSE and stage-2 feature MSE + KL through MLP adaptors (SPEC §4), and the
output loss of the ``"cgspn"`` recipe (the student's final tokens and pooled embedding against the teacher's)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_KL_WEIGHT = 7.0 / 3.0
TAP_KINDS = ("pp", "pb")


def sublayer_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Stage-1 loss of one block: MSE between the student's and the teacher's token-mixer outputs (fp32)."""
    if student.shape != teacher.shape:
        raise ValueError(f"Student and teacher sublayer outputs differ in shape: {student.shape} vs {teacher.shape}")
    return F.mse_loss(student.float(), teacher.float())


def feature_loss(adapted: torch.Tensor, teacher: torch.Tensor, kl_weight: float = DEFAULT_KL_WEIGHT) -> torch.Tensor:
    """``MSE(a(s), t) + kl_weight * KL(softmax(t) || softmax(a(s)))`` for (B, N, C) features.

    The softmax runs over channels for each token; the KL is summed over channels and averaged over tokens.
    Computed in fp32 whatever the autocast dtype.
    """
    if adapted.shape != teacher.shape:
        raise ValueError(f"Adapted student and teacher features differ in shape: {adapted.shape} vs {teacher.shape}")
    adapted, teacher = adapted.float(), teacher.float()
    mse = F.mse_loss(adapted, teacher)
    log_student = F.log_softmax(adapted, dim=-1).flatten(0, -2)
    log_teacher = F.log_softmax(teacher, dim=-1).flatten(0, -2)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return mse + kl_weight * kl


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-example ``MSE(s, t) / mean(t**2)``, averaged over the batch, in fp32: a scale-free error (0 = equal,
    1 = as far as predicting zeros) whose batch mean splits exactly across data-parallel processes."""
    if student.shape != teacher.shape:
        raise ValueError(f"Student and teacher features differ in shape: {student.shape} vs {teacher.shape}")
    student, teacher = student.float().flatten(1), teacher.float().flatten(1)
    error = (student - teacher).pow(2).mean(dim=1)
    return (error / teacher.pow(2).mean(dim=1).clamp_min(torch.finfo(torch.float32).tiny)).mean()


POOLED_COSINE_WEIGHT = 10.0


def output_loss(
    student_tokens: torch.Tensor,
    teacher_tokens: torch.Tensor,
    student_pooled: torch.Tensor,
    teacher_pooled: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of the student's own output: relative MSE of the final (B, N, C) tokens, plus relative MSE and
    ``10 * (1 - cosine)`` of the (B, D) pooled embeddings (zero-shot scores use their direction). Returns the total
    and its detached parts."""
    parts = {
        "tokens": relative_mse(student_tokens, teacher_tokens),
        "pooled": relative_mse(student_pooled, teacher_pooled),
        "pooled_cosine": 1 - F.cosine_similarity(student_pooled.float(), teacher_pooled.float(), dim=-1).mean(),
    }
    total = parts["tokens"] + parts["pooled"] + POOLED_COSINE_WEIGHT * parts["pooled_cosine"]
    return total, {f"output_{name}": value.detach() for name, value in parts.items()}


class TapAdaptor(nn.Module):
    """2-layer MLP adaptor (Linear-GELU-Linear, C -> C) applied to a student tap before the loss."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(features)))


class FeatureDistillationLoss(nn.Module):
    """Stage-2 loss: ``sum over tapped blocks of alpha * L_PP + beta * L_PB`` with one adaptor per tap.

    Args:
        hidden_size: Width ``C`` of the residual stream.
        layers: Tapped block indices.
        kl_weight_pp / kl_weight_pb: ``lam`` of each tap kind (paper: 7/3).
        alpha / beta: Weights of the PP and PB terms (paper: 0.5 each).
    """

    def __init__(
        self,
        hidden_size: int,
        layers: Iterable[int],
        kl_weight_pp: float = DEFAULT_KL_WEIGHT,
        kl_weight_pb: float = DEFAULT_KL_WEIGHT,
        alpha: float = 0.5,
        beta: float = 0.5,
    ):
        super().__init__()
        self.layers = sorted(set(layers))
        if not self.layers:
            raise ValueError("FeatureDistillationLoss needs at least one tapped layer")
        self.weights = {"pp": alpha, "pb": beta}
        self.kl_weights = {"pp": kl_weight_pp, "pb": kl_weight_pb}
        self.adaptors = nn.ModuleDict(
            {self.key(index, kind): TapAdaptor(hidden_size) for index in self.layers for kind in TAP_KINDS}
        )

    @staticmethod
    def key(index: int, kind: str) -> str:
        return f"{kind}_{index}"

    def forward(
        self,
        student: Mapping[int, Mapping[str, torch.Tensor]],
        teacher: Mapping[int, Mapping[str, torch.Tensor]],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its detached parts (``"pp_8"``, ``"pb_8"``, ...) from per-block tap records."""
        total = 0.0
        parts: dict[str, torch.Tensor] = {}
        for index in self.layers:
            for kind in TAP_KINDS:
                key = self.key(index, kind)
                adapted = self.adaptors[key](student[index][kind])
                loss = feature_loss(adapted, teacher[index][kind], self.kl_weights[kind])
                parts[key] = loss.detach()
                total = total + self.weights[kind] * loss
        return total, parts
