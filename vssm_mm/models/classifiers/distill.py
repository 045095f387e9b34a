"""DeiT-style distillation for image classifiers, usable from mmpretrain configs.

* :class:`DistillLinearClsHead`: two linear classifiers on the same feature, ``head`` and
  ``dist_head``. At inference their logits are averaged. In training ``head`` learns from the
  labels and ``dist_head`` from a teacher's predictions (or from the labels when there is no
  teacher). It follows mmpretrain's head interface (``pre_logits``, ``loss``, ``predict``),
  so a plain mmpretrain ``ImageClassifier`` can use it too (without distillation).
* :class:`DistillImageClassifier`: an ``ImageClassifier`` look-alike (same arguments,
  ``forward`` modes and ``extract_feat``) that also runs a frozen teacher on the very batch the
  student sees, i.e. after Mixup/CutMix, and passes the teacher's logits to the head's loss.

The teacher is any classifier that mmpretrain can build: a config dict, or a config file whose
``model`` is used (``'mmpretrain::resnet/resnet50_8xb32_in1k.py'`` works too), plus a
checkpoint. It is built and loaded when training starts (``init_weights``) or at the first
loss computation, so evaluating a student never needs the teacher. It is kept outside the
student's module tree: it is not in the state dict, the optimizer, the EMA copy or the
parameter count. It receives the student's preprocessed (normalised, mixed) batch and runs in
fp32 with autocast off, as the official GroupMamba trainer does.

Nothing here imports mmpretrain at import time. Losses, data preprocessors and teachers are
built from the registry, which resolves names in the current default scope (``mmpretrain``
in mmpretrain configs). Only ``predict`` imports mmpretrain's ``DataSample``, which mmpretrain's
evaluators expect.
"""
import os.path as osp
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel, BaseModule
from torch import nn

from vssm_mm.registry import MODELS

DISTILLATION_TYPES = ('hard', 'soft')


@MODELS.register_module()
class DistillLinearClsHead(BaseModule):
    """Class head + distillation head on one feature; their logits are averaged at inference.

    Args:
        num_classes (int): Number of classes.
        in_channels (int): Width of the feature (the last entry of the backbone/neck tuple).
        loss (dict | nn.Module): Loss on the labels (or Mixup/CutMix scores); built in the
            current default scope. Defaults to ``CrossEntropyLoss``.
        distillation_type (str): ``'hard'`` (cross-entropy with the teacher's arg-max, the
            paper's choice) or ``'soft'`` (KL divergence at temperature ``tau``).
        alpha (float): Weight of the distillation head's loss; the class head's loss is
            weighted ``1 - alpha``. 0.5 in DeiT and GroupMamba.
        tau (float): Temperature of the soft distillation.
        topk (int | Sequence[int]): Kept for mmpretrain compatibility.
        init_cfg (dict, optional): Defaults to truncated-normal (std 0.02) linears with zero
            bias, as the official GroupMamba heads.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 loss: Union[dict, nn.Module] = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 distillation_type: str = 'hard',
                 alpha: float = 0.5,
                 tau: float = 1.0,
                 topk: Union[int, Sequence[int]] = (1, ),
                 init_cfg: Optional[dict] = dict(type='TruncNormal', layer='Linear', std=0.02,
                                                 bias=0.0)):
        super().__init__(init_cfg=init_cfg)
        if num_classes <= 0:
            raise ValueError(f'num_classes={num_classes} must be a positive integer')
        if distillation_type not in DISTILLATION_TYPES:
            raise ValueError(f'distillation_type must be one of {DISTILLATION_TYPES}, got '
                             f'{distillation_type!r}')
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'alpha must be in [0, 1], got {alpha}')
        self.num_classes, self.in_channels = num_classes, in_channels
        self.distillation_type, self.alpha, self.tau = distillation_type, alpha, tau
        self.topk = topk
        self.loss_module = loss if isinstance(loss, nn.Module) else MODELS.build(loss)
        self.head = nn.Linear(in_channels, num_classes)
        self.dist_head = nn.Linear(in_channels, num_classes)

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        return feats[-1]

    def forward_heads(self, feats: Tuple[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(class logits, distillation logits)``."""
        x = self.pre_logits(feats)
        return self.head(x), self.dist_head(x)

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """The inference logits: the mean of both heads (the official evaluation)."""
        cls_score, dist_score = self.forward_heads(feats)
        return (cls_score + dist_score) / 2

    def distillation_loss(self, dist_score: torch.Tensor,
                          teacher_logits: torch.Tensor) -> torch.Tensor:
        """The distillation head's loss against the teacher (DeiT's definitions)."""
        if teacher_logits.shape != dist_score.shape:
            raise ValueError(f'the teacher returned logits of shape {tuple(teacher_logits.shape)}'
                             f', the student {tuple(dist_score.shape)}: the teacher must '
                             'classify the same classes')
        teacher_logits = teacher_logits.detach().float()
        if self.distillation_type == 'hard':
            return F.cross_entropy(dist_score.float(), teacher_logits.argmax(dim=1))
        tau = self.tau
        return F.kl_div(F.log_softmax(dist_score.float() / tau, dim=1),
                        F.log_softmax(teacher_logits / tau, dim=1), reduction='sum',
                        log_target=True) * (tau * tau) / dist_score.numel()

    def loss(self, feats: Tuple[torch.Tensor], data_samples: list,
             teacher_logits: Optional[torch.Tensor] = None, **kwargs) -> dict:
        """``loss_cls`` = (1 - alpha) * label loss of ``head``; ``loss_dist`` = alpha * (the
        distillation loss of ``dist_head``, or its label loss when ``teacher_logits`` is None).
        """
        cls_score, dist_score = self.forward_heads(feats)
        if 'gt_score' in data_samples[0]:  # Mixup / CutMix turn labels into scores
            target = torch.stack([sample.gt_score for sample in data_samples])
        else:
            target = torch.cat([sample.gt_label for sample in data_samples])
        batch = cls_score.size(0)
        loss_cls = self.loss_module(cls_score, target, avg_factor=batch, **kwargs)
        if teacher_logits is None:
            loss_dist = self.loss_module(dist_score, target, avg_factor=batch, **kwargs)
        else:
            loss_dist = self.distillation_loss(dist_score, teacher_logits)
        return dict(loss_cls=(1.0 - self.alpha) * loss_cls, loss_dist=self.alpha * loss_dist)

    def predict(self, feats: Tuple[torch.Tensor], data_samples: Optional[list] = None) -> list:
        from mmpretrain.structures import DataSample  # what mmpretrain's evaluators read

        scores = F.softmax(self(feats), dim=1)
        labels = scores.argmax(dim=1, keepdim=True).detach()
        if data_samples is None:
            data_samples = [None] * scores.size(0)
        out = []
        for sample, score, label in zip(data_samples, scores, labels):
            sample = DataSample() if sample is None else sample
            out.append(sample.set_pred_score(score).set_pred_label(label))
        return out


class _Detached:
    """Keeps a module out of the owner's module tree; ``deepcopy`` (the EMA copy) shares it."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo):
        return self


def _resolve_config_path(path: str) -> str:
    if '::' not in path:
        return path
    from mmengine.utils import get_installed_path
    package, relative = path.split('::', 1)
    return osp.join(get_installed_path(package), '.mim', 'configs', relative)


def load_teacher_weights(teacher: nn.Module, checkpoint: str) -> None:
    """Load ``checkpoint`` (path or URL) into ``teacher`` strictly.

    Accepts mmengine checkpoints (``state_dict``), official trainer files (``model`` /
    ``model_ema``) and bare state dicts, with ``module.`` prefixes removed.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from vssm_mm.checkpoint.state_dict import pick_weights, strip_prefixes
    state_dict, _ = pick_weights(_load_checkpoint(checkpoint, map_location='cpu'))
    state_dict = {strip_prefixes(k): v for k, v in state_dict.items()}
    result = teacher.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f'teacher checkpoint {checkpoint} does not fit the teacher model: '
            f'missing keys {result.missing_keys[:10]}, unexpected keys '
            f'{result.unexpected_keys[:10]}')


@MODELS.register_module()
class DistillImageClassifier(BaseModel):
    """mmpretrain ``ImageClassifier`` with an optional frozen teacher (hard distillation).

    Args:
        backbone (dict): The student's backbone.
        head (dict): Its head; with a teacher it must accept ``teacher_logits`` in ``loss``
            (:class:`DistillLinearClsHead` does).
        neck (dict, optional): Neck between them.
        teacher (dict | str, optional): The teacher classifier: a model config dict, or the
            path of a config file whose ``model`` is used (``pkg::relative/path.py`` is looked
            up in the package's configs). None trains without distillation.
        teacher_checkpoint (str, optional): The teacher's weights (path or URL), required with
            a teacher: distilling from a random teacher is never what one wants.
        pretrained (str, optional): Checkpoint for the whole student (``init_cfg`` shortcut).
        train_cfg (dict, optional): ``dict(augments=[...])`` batch augmentations (Mixup,
            CutMix), as in mmpretrain.
        data_preprocessor (dict, optional): Defaults to ``ClsDataPreprocessor``.
        init_cfg (dict | list[dict], optional): Initialisation of the student.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 neck: Optional[dict] = None,
                 teacher: Optional[Union[dict, str]] = None,
                 teacher_checkpoint: Optional[str] = None,
                 pretrained: Optional[str] = None,
                 train_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[Union[dict, nn.Module]] = None,
                 init_cfg: Optional[Union[dict, list]] = None):
        if pretrained is not None:
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        data_preprocessor = data_preprocessor or {}
        if isinstance(data_preprocessor, dict):
            data_preprocessor = dict(data_preprocessor)
            data_preprocessor.setdefault('type', 'ClsDataPreprocessor')
            data_preprocessor.setdefault('batch_augments', train_cfg)
            data_preprocessor = MODELS.build(data_preprocessor)
        super().__init__(init_cfg=init_cfg, data_preprocessor=data_preprocessor)
        self.backbone = backbone if isinstance(backbone, nn.Module) else MODELS.build(backbone)
        self.neck = neck if neck is None or isinstance(neck, nn.Module) else MODELS.build(neck)
        self.head = head if isinstance(head, nn.Module) else MODELS.build(head)
        if teacher is not None and teacher_checkpoint is None and \
                not isinstance(teacher, nn.Module):
            raise ValueError('a teacher needs teacher_checkpoint=PATH_OR_URL (its trained '
                             'weights); set teacher=None to train without distillation')
        # A module given directly is used as is (its weights are the caller's business).
        is_module = isinstance(teacher, nn.Module)
        self.teacher_cfg = None if is_module else teacher
        self.teacher_checkpoint = teacher_checkpoint
        self._teacher = _Detached(teacher.eval().requires_grad_(False)) if is_module else None

    @property
    def with_neck(self) -> bool:
        return self.neck is not None

    @property
    def with_head(self) -> bool:
        return self.head is not None

    @property
    def with_teacher(self) -> bool:
        return self.teacher_cfg is not None or self._teacher is not None

    @property
    def teacher(self) -> Optional[nn.Module]:
        """The frozen teacher (built and loaded on first access), or None."""
        if not self.with_teacher:
            return None
        if self._teacher is None:
            cfg = self.teacher_cfg
            if isinstance(cfg, str):
                from mmengine.config import Config
                cfg = Config.fromfile(_resolve_config_path(cfg)).model
            model = MODELS.build(cfg)
            load_teacher_weights(model, self.teacher_checkpoint)
            self._teacher = _Detached(model)
        model = self._teacher.module
        model.eval()
        model.requires_grad_(False)
        return model

    def init_weights(self):
        super().init_weights()
        _ = self.teacher  # fail early (a wrong path or config) rather than at the first step

    @torch.no_grad()
    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for ``inputs`` (fp32, autocast off)."""
        teacher = self.teacher
        first = next(teacher.parameters(), None)
        if first is not None and first.device != inputs.device:
            teacher.to(inputs.device)
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            inputs = inputs.float()
            logits = teacher(inputs, mode='tensor') if isinstance(teacher, BaseModel) \
                else teacher(inputs)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise TypeError('the teacher must return (batch, num_classes) logits in tensor mode, '
                            f'got {type(logits).__name__}')
        return logits

    def forward(self, inputs: torch.Tensor, data_samples: Optional[list] = None,
                mode: str = 'tensor'):
        if mode == 'tensor':
            feats = self.extract_feat(inputs)
            return self.head(feats) if self.with_head else feats
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise RuntimeError(f'Invalid mode "{mode}".')

    def extract_feat(self, inputs: torch.Tensor, stage: str = 'neck'):
        if stage not in ('backbone', 'neck', 'pre_logits'):
            raise ValueError(f"stage must be 'backbone', 'neck' or 'pre_logits', got {stage!r}")
        x = self.backbone(inputs)
        if stage == 'backbone':
            return x
        if self.with_neck:
            x = self.neck(x)
        return x if stage == 'neck' else self.head.pre_logits(x)

    def loss(self, inputs: torch.Tensor, data_samples: List) -> dict:
        feats = self.extract_feat(inputs)
        if not self.with_teacher:
            return self.head.loss(feats, data_samples)
        return self.head.loss(feats, data_samples, teacher_logits=self.teacher_logits(inputs))

    def predict(self, inputs: torch.Tensor, data_samples: Optional[list] = None, **kwargs):
        return self.head.predict(self.extract_feat(inputs), data_samples, **kwargs)
