"""iBOT's self-distillation loss: CLS across views, masked patches within a
view, against the centred and sharpened outputs of the EMA teacher."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from mmengine.dist import all_reduce
from torch import nn

from beit_plugin.models.backbones.transformer_block import gather_rows
from beit_plugin.registry import MODELS


def warmup_value(start: float, end: float, warmup_iters: int,
                 iteration: int) -> float:
    """``np.linspace(start, end, warmup_iters)[iteration]``, then ``end``:
    the official teacher-temperature warm-up, counted in iterations."""
    if iteration >= warmup_iters - 1 or warmup_iters <= 1:
        return float(end)
    return start + (end - start) * iteration / (warmup_iters - 1)


@MODELS.register_module()
class iBOTLoss(nn.Module):
    """iBOT's loss (the official ``iBOTLoss``), with the EMA centres of the
    teacher outputs as buffers (``center`` ``(1, K)`` for the CLS token,
    ``center2`` ``(1, 1, K_p)`` for the patches), so that they live in every
    checkpoint and a resumed run goes on with them.

    With ``G`` global views (the student's masked, the teacher's not) and
    ``L`` local views (student only, CLS only), teacher targets are
    ``softmax((t - center) / T_t)`` and student predictions
    ``log_softmax(s / T_s)``:

    - ``loss_cls``: the cross-entropy of every student view ``v`` (global
      and local) against every teacher global view ``q != v``, averaged over
      the ``G (G + L) - G`` pairs and the batch, times ``lambda1``;
    - ``loss_patch``: per global view, the patch cross-entropy of the
      student against the teacher of the same view, summed over the masked
      patches of a sample and divided by their count (at least 1), averaged
      over the batch and the views, times ``lambda2``.

    The teacher temperatures rise linearly from ``warmup_teacher_temp`` to
    ``teacher_temp`` (CLS) and from ``warmup_teacher_patch_temp`` to
    ``teacher_patch_temp`` (patches) over ``warmup_iters`` iterations. After
    each loss the centres move towards the batch mean of the teacher
    outputs (all ranks): ``c <- m c + (1 - m) mean(t)``.

    Args:
        out_channels (int): CLS prototypes ``K``.
        patch_out_channels (int, optional): patch prototypes ``K_p``; None
            means ``out_channels``. Defaults to None.
        num_global_views (int): ``G``. Defaults to 2.
        student_temp (float): ``T_s``. Defaults to 0.1.
        teacher_temp (float): CLS ``T_t`` after the warm-up. Defaults to
            0.07.
        warmup_teacher_temp (float): CLS ``T_t`` at iteration 0. Defaults
            to 0.04.
        teacher_patch_temp (float): patch ``T_t`` after the warm-up.
            Defaults to 0.07.
        warmup_teacher_patch_temp (float): patch ``T_t`` at iteration 0.
            Defaults to 0.04.
        warmup_iters (int): warm-up length in iterations. Defaults to 0.
        center_momentum (float): CLS centre momentum. Defaults to 0.9.
        center_momentum2 (float): patch centre momentum. Defaults to 0.9.
        lambda1 (float): CLS loss weight. Defaults to 1.
        lambda2 (float): patch loss weight. Defaults to 1.
    """

    def __init__(self,
                 out_channels: int,
                 patch_out_channels: Optional[int] = None,
                 num_global_views: int = 2,
                 student_temp: float = 0.1,
                 teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04,
                 teacher_patch_temp: float = 0.07,
                 warmup_teacher_patch_temp: float = 0.04,
                 warmup_iters: int = 0,
                 center_momentum: float = 0.9,
                 center_momentum2: float = 0.9,
                 lambda1: float = 1.0,
                 lambda2: float = 1.0) -> None:
        super().__init__()
        patch_out_channels = patch_out_channels or out_channels
        self.num_global_views = num_global_views
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_patch_temp = teacher_patch_temp
        self.warmup_teacher_patch_temp = warmup_teacher_patch_temp
        self.warmup_iters = warmup_iters
        self.center_momentum = center_momentum
        self.center_momentum2 = center_momentum2
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.register_buffer('center', torch.zeros(1, out_channels))
        self.register_buffer('center2', torch.zeros(1, 1, patch_out_channels))

    def temperatures(self, iteration: int):
        """The teacher's ``(CLS, patch)`` temperatures at ``iteration``."""
        return (warmup_value(self.warmup_teacher_temp, self.teacher_temp,
                             self.warmup_iters, iteration),
                warmup_value(self.warmup_teacher_patch_temp,
                             self.teacher_patch_temp, self.warmup_iters,
                             iteration))

    def forward(self,
                student_cls: torch.Tensor,
                student_patch: torch.Tensor,
                teacher_cls: torch.Tensor,
                teacher_patch: torch.Tensor,
                mask: torch.Tensor,
                iteration: int,
                student_local_cls: Optional[torch.Tensor] = None,
                update_center: bool = True,
                rows: Optional[torch.Tensor] = None
                ) -> Dict[str, torch.Tensor]:
        """Args:
            student_cls: ``(G B, K)`` the global views, view-major.
            student_patch: ``(G B, N, K_p)``, or ``(G B, M, K_p)`` at
                ``rows``.
            teacher_cls: ``(G B, K)``.
            teacher_patch: ``(G B, N, K_p)``, every patch (the centre is
                their mean).
            mask: ``(G B, N)`` bool, True = masked for the student; with
                ``rows``, ``(G B, M)``: which of them are masked.
            iteration: the current (0-based) training iteration.
            student_local_cls: ``(L B, K)`` or None.
            update_center: move the centres afterwards (training).
            rows: optional ``(G B, M)`` long indices of the ``N`` patches
                that ``student_patch`` holds (only masked patches are
                scored, so the student needs no others).

        Returns:
            ``loss_cls``, ``loss_patch`` and, logged only,
            ``teacher_entropy``: the mean entropy of the teacher's CLS
            targets (``ln K`` uniform, 0 one prototype).
        """
        temp, temp2 = self.temperatures(iteration)
        views = self.num_global_views
        batch = len(student_cls) // views
        student = [student_cls]
        if student_local_cls is not None and len(student_local_cls):
            student.append(student_local_cls)
        student = torch.cat(student) / self.student_temp
        student = [F.log_softmax(view, dim=-1)
                   for view in student.chunk(len(student) // batch)]
        teacher = F.softmax((teacher_cls - self.center) / temp,
                            dim=-1).detach().chunk(views)
        student_p = (student_patch / self.student_temp).chunk(views)
        scored = teacher_patch if rows is None else gather_rows(
            teacher_patch, rows)
        teacher_p = F.softmax((scored - self.center2) / temp2,
                              dim=-1).detach().chunk(views)
        masks = mask.flatten(1).chunk(views)

        loss_cls = loss_patch = 0.
        terms_cls = terms_patch = 0
        for q in range(views):
            for v, pred in enumerate(student):
                if v == q:
                    loss = torch.sum(
                        -teacher_p[q] * F.log_softmax(student_p[v], dim=-1),
                        dim=-1)
                    weight = masks[v].to(loss.dtype)
                    loss = (loss * weight).sum(-1) / weight.sum(-1).clamp(
                        min=1.0)
                    loss_patch = loss_patch + loss.mean()
                    terms_patch += 1
                else:
                    loss = torch.sum(-teacher[q] * pred, dim=-1)
                    loss_cls = loss_cls + loss.mean()
                    terms_cls += 1
        if update_center:
            self.update_center(teacher_cls, teacher_patch)
        # a collapse shows here: ln K when the teacher is uniform, 0 when it
        # puts every image on one prototype
        targets = torch.cat(teacher)
        entropy = -(targets * targets.clamp(min=1e-12).log()).sum(-1).mean()
        return dict(loss_cls=loss_cls / terms_cls * self.lambda1,
                    loss_patch=loss_patch / terms_patch * self.lambda2,
                    teacher_entropy=entropy.detach())

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor,
                      teacher_patch: torch.Tensor) -> None:
        """``center <- m center + (1 - m) mean_b t_cls``, ``center2 <- m2
        center2 + (1 - m2) mean_b mean_n t_patch``, the means over the
        global batch of every rank (equal batches per rank)."""
        cls_center = teacher_cls.float().mean(0, keepdim=True)
        patch_center = teacher_patch.float().mean(1).mean(0, keepdim=True)
        all_reduce(cls_center, op='mean')
        all_reduce(patch_center, op='mean')
        self.center.mul_(self.center_momentum).add_(
            cls_center.to(self.center.dtype), alpha=1 - self.center_momentum)
        self.center2.mul_(self.center_momentum2).add_(
            patch_center.unsqueeze(0).to(self.center2.dtype),
            alpha=1 - self.center_momentum2)
