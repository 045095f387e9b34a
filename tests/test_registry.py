import subprocess
import sys

import pytest
import torch
from vssm_testing import has_mm_stack


def test_import_does_not_pull_task_libraries():
    code = ('import sys, vssm_mm, vssm_mm.registry, vssm_mm.models; '
            'bad = [m for m in ("mmdet", "mmseg", "mmpretrain") if m in sys.modules]; '
            'print(bad); sys.exit(1 if bad else 0)')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_registry_is_scoped_child_of_mmengine_root():
    from mmengine.registry import MODELS as ROOT
    from vssm_mm.registry import MODELS
    assert MODELS.scope == 'vssm_mm'
    assert MODELS.parent is ROOT
    assert ROOT._children['vssm_mm'] is MODELS


@pytest.mark.parametrize('library', ['mmdet', 'mmseg', 'mmpretrain'])
def test_scoped_type_builds_from_task_library(library):
    if not has_mm_stack(library):
        pytest.skip(f'{library} (with mmcv ops) is not installed')
    import importlib

    from mmengine.registry import init_default_scope
    from vssm_mm.registry import MODELS

    class PlumbingNet(torch.nn.Module):

        def __init__(self, width=4):
            super().__init__()
            self.width = width

    name = f'PlumbingNet_{library}'
    MODELS.register_module(name=name, module=PlumbingNet, force=True)
    init_default_scope(library)
    lib_models = importlib.import_module(f'{library}.registry').MODELS
    net = lib_models.build(dict(type=f'vssm_mm.{name}', width=7))
    assert isinstance(net, PlumbingNet) and net.width == 7
    with pytest.raises(KeyError):
        lib_models.build(dict(type=name))  # siblings are not searched without the scope
