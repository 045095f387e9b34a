"""Check what a config needs on disk before a Runner is built.

A config names datasets, annotation files and checkpoints that the user has to provide. When
one is missing, mmengine fails late and deep (a pycocotools traceback after the model was
built). :func:`missing_inputs` lists everything missing at once, each with how to get it, so
``tools/train.py`` and ``tools/test.py`` can print one message and exit with status 2.
"""
import importlib.util
import os.path as osp
from typing import Iterator, List, Optional, Tuple

DATA_DOC = 'docs/get_started.md#data-preparation'
WEIGHTS_DOC = 'docs/get_started.md#pretrained-weights'

_WRAPPER_KEYS = ('dataset', 'datasets')


def _is_remote(path: str) -> bool:
    return '://' in path


def _join(root: Optional[str], path: str) -> str:
    return path if not root or osp.isabs(path) or _is_remote(path) else osp.join(root, path)


def _datasets(cfg, prefix: str) -> Iterator[Tuple[str, dict]]:
    """Yield ``(config key, dataset dict)`` for a dataset and those wrapped inside it."""
    if not isinstance(cfg, dict):
        return
    if cfg.get('data_root') is not None or cfg.get('ann_file') or cfg.get('data_prefix'):
        yield prefix, cfg
    for key in _WRAPPER_KEYS:
        inner = cfg.get(key)
        if isinstance(inner, dict):
            yield from _datasets(inner, f'{prefix}.{key}')
        elif isinstance(inner, (list, tuple)):
            for i, item in enumerate(inner):
                yield from _datasets(item, f'{prefix}.{key}.{i}')


def _dataset_problems(key: str, dataset: dict) -> List[str]:
    problems = []
    root = dataset.get('data_root')
    if root and not _is_remote(root) and not osp.isdir(root):
        expected = [dataset['ann_file']] if isinstance(dataset.get('ann_file'), str) and \
            dataset['ann_file'] else []
        prefixes = dataset.get('data_prefix')
        if isinstance(prefixes, str) and prefixes:
            expected.append(prefixes)
        elif isinstance(prefixes, dict):
            expected += [v for v in prefixes.values() if isinstance(v, str) and v]
        holding = f", to hold {', '.join(expected)}" if expected else ''
        return [f'dataset folder {root}{holding} ({key}.data_root)']
    ann_file = dataset.get('ann_file')
    if isinstance(ann_file, str) and ann_file:
        path = _join(root, ann_file)
        if not _is_remote(path) and not osp.exists(path):
            problems.append(f'annotation file {path} ({key}.ann_file)')
    prefixes = dataset.get('data_prefix')
    if isinstance(prefixes, str):  # mmpretrain's CustomDataset takes the image folder itself
        prefixes = {'': prefixes}
    if isinstance(prefixes, dict):
        for name, value in prefixes.items():
            if isinstance(value, str) and value:
                path = _join(root, value)
                if not _is_remote(path) and not osp.isdir(path):
                    where = f'{key}.data_prefix' + (f'.{name}' if name else '')
                    problems.append(f'image folder {path} ({where})')
    return problems


def _evaluator_problems(key: str, evaluator) -> List[str]:
    items = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
    problems = []
    for i, item in enumerate(items):
        ann_file = item.get('ann_file') if isinstance(item, dict) else None
        if isinstance(ann_file, str) and ann_file and not _is_remote(ann_file) \
                and not osp.exists(ann_file):
            where = key if len(items) == 1 else f'{key}.{i}'
            problems.append(f'annotation file {ann_file} ({where}.ann_file)')
    return problems


def _pretrained_checkpoints(model_cfg, prefix='model') -> Iterator[Tuple[str, str]]:
    """Yield ``(config key, checkpoint)`` of every ``Pretrained`` init_cfg in the model."""
    if isinstance(model_cfg, dict):
        init = model_cfg.get('init_cfg')
        for i, item in enumerate(init if isinstance(init, (list, tuple)) else [init]):
            if isinstance(item, dict) and item.get('type') == 'Pretrained' \
                    and item.get('checkpoint'):
                index = f'.{i}' if isinstance(init, (list, tuple)) else ''
                where = f'{prefix}.init_cfg{index}'
                yield f'{where}.checkpoint', item['checkpoint']
        for key, value in model_cfg.items():
            if key != 'init_cfg':
                yield from _pretrained_checkpoints(value, f'{prefix}.{key}')


def _convert_hint(model_cfg) -> str:
    """The converter command for the config's backbone, when one arch fits it."""
    backbone = model_cfg.get('backbone') if isinstance(model_cfg, dict) else None
    if not isinstance(backbone, dict):
        return ''
    from vssm_mm.checkpoint.convert import ARCHS
    name = str(backbone.get('type', '')).split('.')[-1]
    names = sorted(arch for arch, spec in ARCHS.items()
                   if spec.backbone == name and spec.arch == backbone.get('arch'))
    if not names:
        return ''
    return f'python tools/convert_checkpoint.py --arch {names[0]} OFFICIAL.pth '


def missing_inputs(cfg, mode: str, resume: bool = False) -> List[str]:
    """Everything ``cfg`` needs on disk for ``mode`` ('train' or 'test') that is missing.

    Returns:
        One line per missing item, saying where the config names it and how to get it.
    """
    loaders = ['test'] if mode == 'test' else ['train'] + (
        ['val'] if cfg.get('val_dataloader') and cfg.get('val_cfg') is not None else [])
    missing, data_missing = [], False
    for split in loaders:
        loader = cfg.get(f'{split}_dataloader')
        if isinstance(loader, dict):
            for key, dataset in _datasets(loader.get('dataset'), f'{split}_dataloader.dataset'):
                problems = _dataset_problems(key, dataset)
                data_missing |= bool(problems)
                missing += problems
        evaluator = cfg.get(f'{split}_evaluator')
        if evaluator:
            problems = _evaluator_problems(f'{split}_evaluator', evaluator)
            data_missing |= bool(problems)
            missing += problems
    missing = list(dict.fromkeys(missing))
    if data_missing:
        others = ' (and val_ alike)' if mode == 'train' else ''
        missing.append(f'  -> get the dataset as {DATA_DOC} describes, or point the config at '
                       f'your copy: --cfg-options {loaders[0]}_dataloader.dataset.data_root='
                       f'/path/{others}')

    if mode == 'train':
        model = cfg.get('model', {})
        # init_cfg checkpoints load before a resume overwrites them, so they are needed too.
        weights = list(_pretrained_checkpoints(model))
        if cfg.get('load_from') and not resume:
            weights.append(('load_from', cfg.load_from))
        for key, ckpt in weights:
            if not _is_remote(ckpt) and not osp.isfile(ckpt):
                hint = _convert_hint(model) if 'init_cfg' in key else ''
                how = (f'convert the official ImageNet checkpoint: {hint}{ckpt}' if hint else
                       f'see {WEIGHTS_DOC}')
                off = key[:-len('.checkpoint')] if key.endswith('.checkpoint') else key
                missing.append(f'checkpoint {ckpt} ({key})\n  -> {how}; or train from '
                               f'scratch with --cfg-options {off}=None')
        missing += _teacher_problems(model)
    return missing


def _teacher_problems(model) -> List[str]:
    if not isinstance(model, dict) or not model.get('teacher'):
        return []
    problems = []
    teacher = model['teacher']
    if isinstance(teacher, dict) and str(teacher.get('type', '')).endswith('TimmClassifier') \
            and importlib.util.find_spec('timm') is None:
        problems.append('the Python package timm, for the distillation teacher '
                        '(model.teacher is a TimmClassifier)\n  -> pip install timm')
    checkpoint = model.get('teacher_checkpoint')
    if isinstance(checkpoint, str) and not _is_remote(checkpoint) and \
            not osp.isfile(checkpoint):
        problems.append(f'the distillation teacher checkpoint {checkpoint} '
                        '(model.teacher_checkpoint)\n  -> download it as the family page '
                        '(docs/models/groupmamba.md) says')
    if problems:
        problems.append('  -> or train without distillation: --cfg-options model.teacher=None')
    return problems


def format_missing(config: str, missing: List[str]) -> str:
    lines = [f'{config} needs files that are not there:']
    lines += [line if line.startswith('  ->') else f'  - {line}' for line in missing]
    lines.append('Nothing was started.')
    return '\n'.join(lines)
