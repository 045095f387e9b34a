"""Distillation training (DeiT-style, as GroupMamba trains): head losses, teacher plumbing."""
import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vssm_testing import has_mm_stack

from vssm_mm.models.classifiers import DistillImageClassifier, DistillLinearClsHead
from vssm_mm.models.classifiers.distill import _resolve_config_path

pytestmark = pytest.mark.skipif(not has_mm_stack('mmpretrain'), reason='needs mmpretrain')

SMALL = dict(stem_hidden_dim=8, embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1),
             mlp_ratios=(2, 2, 2, 2))
NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def mmpretrain_scope():
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')


def _samples(labels=None, scores=None):
    from mmpretrain.structures import DataSample
    if scores is not None:
        return [DataSample().set_gt_score(s) for s in scores]
    return [DataSample().set_gt_label(int(label)) for label in labels]


def _smooth_ce(logits, target, eps=0.1):
    """Cross-entropy with soft targets smoothed as mmpretrain/timm do (mode 'original')."""
    smoothed = target * (1 - eps) + eps / logits.shape[1]
    return -(smoothed * F.log_softmax(logits, dim=1)).sum(1).mean()


class ToyTeacher(nn.Module):
    """A plain module teacher that remembers what it was shown."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, num_classes)
        self.seen = []

    def forward(self, x):
        self.seen.append((x.clone(), torch.is_autocast_enabled(x.device.type)))
        return self.fc(self.conv(x).mean((2, 3)))


def _classifier(teacher=None, **kwargs):
    return DistillImageClassifier(
        backbone=dict(type='vssm_mm.GroupMamba', arch=SMALL, out_type='cls_token',
                      drop_path_rate=0.0),
        head=dict(type='vssm_mm.DistillLinearClsHead', num_classes=NUM_CLASSES, in_channels=64,
                  loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original')),
        teacher=teacher,
        train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
        data_preprocessor=dict(num_classes=NUM_CLASSES, mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], to_rgb=True),
        **kwargs)


def _batch(batch=4, size=(40, 48)):
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, *size), dtype=torch.uint8) for _ in range(batch)]
    return dict(inputs=images, data_samples=_samples(labels=torch.arange(batch) % NUM_CLASSES))


@pytest.mark.parametrize('kind', ['hard', 'soft'])
def test_head_losses_follow_deit(kind):
    """loss = (1 - a) * smoothed CE(head, mixed labels) + a * CE(dist_head, teacher arg-max)
    (or a * T^2 * KL(teacher_T || student_T) / numel for 'soft')."""
    torch.manual_seed(0)
    head = DistillLinearClsHead(
        NUM_CLASSES, 8, loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        distillation_type=kind, alpha=0.3, tau=2.0)
    feats = (torch.randn(6, 8), )
    scores = torch.softmax(torch.randn(6, NUM_CLASSES) * 3, dim=1)  # Mixup-like soft targets
    teacher = torch.randn(6, NUM_CLASSES) * 3
    losses = head.loss(feats, _samples(scores=scores), teacher_logits=teacher)
    cls_score, dist_score = head.head(feats[0]), head.dist_head(feats[0])
    torch.testing.assert_close(losses['loss_cls'], 0.7 * _smooth_ce(cls_score, scores))
    if kind == 'hard':
        expected = F.cross_entropy(dist_score, teacher.argmax(1))
    else:
        log_teacher, log_student = F.log_softmax(teacher / 2, 1), F.log_softmax(dist_score / 2, 1)
        expected = (log_teacher.exp() * (log_teacher - log_student)).sum() * 4 / dist_score.numel()
    torch.testing.assert_close(losses['loss_dist'], 0.3 * expected)
    # No teacher: the distillation head learns the labels too.
    plain = head.loss(feats, _samples(scores=scores))
    torch.testing.assert_close(plain['loss_dist'], 0.3 * _smooth_ce(dist_score, scores))
    with pytest.raises(ValueError, match='same classes'):
        head.loss(feats, _samples(scores=scores), teacher_logits=teacher[:, :3])


def test_inference_averages_both_heads():
    torch.manual_seed(0)
    head = DistillLinearClsHead(NUM_CLASSES, 8).eval()
    feats = (torch.randn(3, 8), )
    mean = (head.head(feats[0]) + head.dist_head(feats[0])) / 2
    torch.testing.assert_close(head(feats), mean)
    predictions = head.predict(feats)
    torch.testing.assert_close(torch.stack([p.pred_score for p in predictions]),
                               F.softmax(mean, dim=1))
    assert [int(p.pred_label) for p in predictions] == mean.argmax(1).tolist()
    with pytest.raises(ValueError, match='distillation_type'):
        DistillLinearClsHead(NUM_CLASSES, 8, distillation_type='medium')


def test_teacher_sees_the_same_mixed_images():
    teacher = ToyTeacher()
    model = _classifier(teacher=teacher)
    seen_by_student = []
    model.backbone.register_forward_pre_hook(lambda _, args: seen_by_student.append(args[0]))
    model.train()
    assert not teacher.training  # the teacher stays in eval mode

    data = model.data_preprocessor(_batch(), True)
    plain = model.data_preprocessor(_batch(), False)['inputs']
    assert not torch.equal(data['inputs'], plain)  # Mixup / CutMix happened
    assert data['data_samples'][0].gt_score.shape == (NUM_CLASSES, )
    losses = model(**data, mode='loss')

    (teacher_input, autocast), = teacher.seen
    torch.testing.assert_close(teacher_input, seen_by_student[0], rtol=0, atol=0)
    torch.testing.assert_close(teacher_input, data['inputs'], rtol=0, atol=0)
    with torch.no_grad():
        _, dist_score = model.head.forward_heads(model.backbone(data['inputs']))
        hard = F.cross_entropy(dist_score, teacher(data['inputs']).argmax(1))
    torch.testing.assert_close(losses['loss_dist'], 0.5 * hard)

    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert model.head.dist_head.weight.grad.abs().sum() > 0
    # The teacher is not part of the student: not saved, not optimised, not EMA-copied.
    assert not any(k.startswith(('teacher', '_teacher')) for k in model.state_dict())
    assert not any(p is q for p in model.parameters() for q in teacher.parameters())
    assert copy.deepcopy(model).teacher is teacher


def test_teacher_runs_in_fp32_under_autocast():
    teacher = ToyTeacher()
    model = _classifier(teacher=teacher).train()
    data = model.data_preprocessor(_batch(batch=2), True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(**data, mode='loss')
    (teacher_input, autocast), = teacher.seen
    assert teacher_input.dtype == torch.float32 and not autocast
    assert all(torch.isfinite(v) for v in losses.values())


def test_without_teacher_both_heads_learn_the_labels():
    model = _classifier(teacher=None).train()
    assert not model.with_teacher and model.teacher is None
    data = model.data_preprocessor(_batch(), True)
    losses = model(**data, mode='loss')
    with torch.no_grad():
        cls_score, dist_score = model.head.forward_heads(model.backbone(data['inputs']))
    scores = torch.stack([s.gt_score for s in data['data_samples']])
    torch.testing.assert_close(losses['loss_cls'], 0.5 * _smooth_ce(cls_score, scores))
    torch.testing.assert_close(losses['loss_dist'], 0.5 * _smooth_ce(dist_score, scores))


def _toy_mmpretrain_teacher(tmp_path, container):
    from mmpretrain.registry import MODELS
    cfg = dict(type='ImageClassifier',
               backbone=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8),
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=64))
    torch.manual_seed(3)
    reference = MODELS.build(cfg)
    reference.init_weights()
    state = reference.state_dict()
    path = tmp_path / f'teacher_{container}.pth'
    if container == 'mmengine':
        torch.save({'state_dict': state, 'meta': {}}, path)
    else:  # an official trainer file: 'model' with DDP prefixes
        torch.save({'model': {f'module.{k}': v for k, v in state.items()}, 'epoch': 1}, path)
    return cfg, str(path), reference.eval()


@pytest.mark.parametrize('container', ['mmengine', 'trainer'])
@pytest.mark.parametrize('given_as', ['dict', 'file'])
def test_any_mmpretrain_classifier_is_a_teacher(tmp_path, container, given_as):
    cfg, checkpoint, reference = _toy_mmpretrain_teacher(tmp_path, container)
    if given_as == 'file':
        path = tmp_path / 'teacher_cfg.py'
        path.write_text(f'model = {cfg!r}\n')
        cfg = str(path)
    model = _classifier(teacher=cfg, teacher_checkpoint=checkpoint)
    assert model._teacher is None  # built lazily: evaluation never needs the teacher
    model.init_weights()  # training starts: the teacher is built and loaded
    teacher = model.teacher
    assert not teacher.training
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[key], value, msg=key)
    x = torch.randn(2, 3, 32, 40)
    torch.testing.assert_close(model.teacher_logits(x), reference(x, mode='tensor'))
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in _classifier().parameters())


def test_teacher_errors_say_what_to_do(tmp_path):
    cfg, checkpoint, _ = _toy_mmpretrain_teacher(tmp_path, 'mmengine')
    with pytest.raises(ValueError, match='teacher_checkpoint'):
        _classifier(teacher=cfg)
    wrong = dict(cfg, backbone=dict(cfg['backbone'], depth=34))
    with pytest.raises(RuntimeError, match='missing keys'):
        _classifier(teacher=wrong, teacher_checkpoint=checkpoint).init_weights()
    path = _resolve_config_path('mmpretrain::regnet/regnetx-400mf_8xb128_in1k.py')
    assert path.endswith('regnetx-400mf_8xb128_in1k.py') and os.path.isfile(path)


def test_distillation_trains_the_student(tmp_path):
    """A few optimiser steps with a teacher reduce the distillation loss on a fixed batch."""
    torch.manual_seed(0)
    model = _classifier(teacher=ToyTeacher())
    model.init_weights()
    model.train()
    data = model.data_preprocessor(_batch(size=(32, 32)), False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(5):
        losses = model(**data, mode='loss')
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append(losses['loss_dist'].item())
    assert history[-1] < 0.8 * history[0]
