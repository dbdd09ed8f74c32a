"""iBOT: masked image modeling with an online tokenizer (an EMA teacher)."""
import copy
from typing import Dict, List, Optional, Union

import torch
from mmengine.logging import print_log
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.structures import DataSample
from torch import nn

from beit_plugin.registry import MODELS
from .masked_rows import start_masked_rows


def _build(cfg: Union[dict, nn.Module, None]) -> Optional[nn.Module]:
    """Build a part from our registry (see ``beit_pretrainer._build``)."""
    if cfg is None or isinstance(cfg, nn.Module):
        return cfg
    return MODELS.build(cfg)


@MODELS.register_module()
class iBOTPretrainer(BaseSelfSupervisor):
    """iBOT masked image modeling: the target generator is online, a
    momentum (EMA) copy of the student's backbone and projection head.

    The pipeline gives ``G`` global views of each image (the same size; by
    default 2), each with its own patch mask (``mask`` ``(G, H_p, W_p)``,
    :class:`~beit_plugin.datasets.transforms.MultiViewBlockwiseMaskGenerator`),
    then optionally ``L`` smaller local views. The teacher sees the global
    views unmasked; the student sees them with masked patches replaced by its
    mask token, and the local views whole. Both project their tokens with
    :class:`~beit_plugin.models.heads.iBOTProjectionHead`;
    :class:`~beit_plugin.models.heads.iBOTLoss` distils the teacher's CLS
    distribution of one global view into the student's CLS token of every
    other view, and the teacher's patch distributions into the student's
    masked patches of the same view.

    The teacher gets no gradient (``requires_grad=False``, always in eval
    mode, so no drop path); :class:`~beit_plugin.engine.hooks.EMATeacherHook`
    updates it after each optimizer step with :meth:`momentum_update` and
    tells the model the iteration (teacher temperature warm-up, frozen last
    layer) with :meth:`set_iteration`.

    Checkpoint layout: the student is ``backbone.*`` and ``head.*``, as in
    :class:`BEiTPretrainer`, so the fine-tuning, linear-probe and
    segmentation configs load ``prefix='backbone.'`` unchanged; the teacher
    is ``teacher.backbone.*`` / ``teacher.head.*`` (``prefix=
    'teacher.backbone.'`` evaluates the teacher, as the official iBOT
    results do); the loss's centres are ``distill_loss.center`` and
    ``distill_loss.center2``; ``iteration`` is the schedules' position.

    Args:
        backbone (dict): our ``BEiT`` with ``use_mask_token=True``,
            ``out_type='raw'`` (the last ``out_indices`` entry is used).
        head (dict): ``iBOTProjectionHead``.
        distill_loss (dict): ``iBOTLoss`` (its ``num_global_views`` is
            ``G``).
        freeze_last_layer_iters (int): iterations during which the head's
            last layer gets no gradient (official: the first epoch).
            Defaults to 0.
        data_preprocessor (dict, optional): e.g. MMPretrain's
            ``SelfSupDataPreprocessor`` (normalises every view).
        init_cfg (dict, optional): MMEngine initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 distill_loss: dict,
                 freeze_last_layer_iters: int = 0,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            backbone=_build(backbone),
            head=_build(head),
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg)
        if getattr(self.backbone, 'mask_token', None) is None:
            raise ValueError('iBOTPretrainer needs a backbone with a mask '
                             'token: set use_mask_token=True')
        if getattr(self.backbone, 'out_type', 'raw') != 'raw':
            raise ValueError("iBOTPretrainer needs the backbone's tokens: set "
                             f"out_type='raw' (not "
                             f'{self.backbone.out_type!r})')
        self.distill_loss = _build(distill_loss)
        self.num_global_views = self.distill_loss.num_global_views
        self.freeze_last_layer_iters = freeze_last_layer_iters
        self.teacher = nn.ModuleDict(
            dict(backbone=copy.deepcopy(self.backbone),
                 head=copy.deepcopy(self.head)))
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.register_buffer('iteration', torch.zeros((), dtype=torch.long))
        self._iteration = 0
        self._told_iteration = False

    # ------------------------------------------------------------------
    # the teacher
    # ------------------------------------------------------------------

    def student_teacher_pairs(self):
        """``(student parameter, teacher parameter)`` pairs, by name."""
        student = dict(self.backbone.named_parameters(prefix='backbone'))
        student.update(self.head.named_parameters(prefix='head'))
        return [(student[name], param)
                for name, param in self.teacher.named_parameters()]

    @torch.no_grad()
    def copy_student_to_teacher(self) -> None:
        """Teacher parameters and buffers := the student's."""
        self.teacher.backbone.load_state_dict(self.backbone.state_dict())
        self.teacher.head.load_state_dict(self.head.state_dict())

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """``teacher <- m teacher + (1 - m) student``, every parameter."""
        pairs = self.student_teacher_pairs()
        teacher = [t for _, t in pairs]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, [s.detach() for s, _ in pairs],
                            alpha=1 - momentum)

    def set_iteration(self, iteration: int) -> None:
        """The (0-based) training iteration about to run."""
        self._iteration = int(iteration)
        self._told_iteration = True
        self.iteration.fill_(self._iteration)

    def init_weights(self) -> None:
        """Initialise (or load) the student, then start the teacher from
        it, as the official code does."""
        super().init_weights()
        self.copy_student_to_teacher()

    def train(self, mode: bool = True) -> 'iBOTPretrainer':
        """Set training mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------

    def extract_feat(self, inputs: torch.Tensor):
        """Backbone features of unmasked images."""
        return self.backbone(inputs)

    def _masks(self, data_samples: List[DataSample],
               device: torch.device) -> torch.Tensor:
        """``(G B, H_p, W_p)`` bool, view-major, from each sample's
        ``(G, H_p, W_p)`` mask."""
        mask = torch.stack([torch.as_tensor(s.mask) for s in data_samples])
        if mask.dim() != 4 or mask.shape[1] != self.num_global_views:
            raise ValueError(
                f'iBOT needs one mask per global view: the data samples\' '
                f'masks are {tuple(mask.shape[1:])}, not '
                f'({self.num_global_views}, H_p, W_p): use '
                'MultiViewBlockwiseMaskGenerator(num_views='
                f'{self.num_global_views}) after the MultiView transform')
        return mask.to(device).bool().transpose(0, 1).flatten(0, 1)

    def loss(self, inputs: List[torch.Tensor],
             data_samples: List[DataSample],
             **kwargs) -> Dict[str, torch.Tensor]:
        """Args:
            inputs: ``G`` global views ``(B, 3, H, W)`` then the local views
                (``(B, 3, h, w)``, the same size among themselves).
            data_samples: each with ``mask`` ``(G, H_p, W_p)`` bool.

        Returns:
            ``loss_cls``, ``loss_patch`` and ``teacher_entropy`` (logged).
        """
        if self.training and not self._told_iteration:
            self._told_iteration = True
            print_log(
                'iBOTPretrainer trains without EMATeacherHook: the teacher '
                'is never updated and the temperatures stay at iteration 0; '
                "add custom_hooks=[dict(type='beit_plugin.EMATeacherHook')]",
                logger='current', level=30)
        views = self.num_global_views
        if len(inputs) < views:
            raise ValueError(f'iBOT needs {views} global views, got '
                             f'{len(inputs)} inputs')
        images = torch.cat(inputs[:views])
        mask = self._masks(data_samples, images.device)
        flat = mask.flatten(1)
        # with the last block's output, the student's last block and head
        # compute only the CLS and masked rows (the patch loss scores no
        # others); their count travels to the host while the device runs
        # the teacher
        prune = self.backbone.num_layers - 1 in self.backbone.out_indices
        pending_rows = start_masked_rows(flat) if prune else None
        with torch.no_grad():
            teacher_cls, teacher_patch = self.teacher.head(
                self.teacher.backbone(images)[-1])
        rows, scored = pending_rows() if prune else (None, flat)
        freeze = self._iteration < self.freeze_last_layer_iters
        student_cls, student_patch = self.head(
            self.backbone(images, mask, rows)[-1], freeze)
        local_cls = None
        if len(inputs) > views:
            local = torch.cat(inputs[views:])
            local_cls = self.head(self.backbone(local)[-1][:, 0], freeze)
        return self.distill_loss(
            student_cls, student_patch, teacher_cls, teacher_patch, scored,
            self._iteration, local_cls, update_center=self.training,
            rows=None if rows is None else rows[:, 1:] - 1)
