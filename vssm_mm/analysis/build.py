"""Build a config's model for measuring it (FLOPs, throughput): no checkpoint is loaded."""
import importlib

#: The task libraries whose configs the analysis tools read.
TASK_SCOPES = ('mmpretrain', 'mmdet', 'mmseg')


def task_scope(cfg) -> str:
    """The config's task library (its ``default_scope``)."""
    scope = cfg.get('default_scope')
    if scope not in TASK_SCOPES:
        raise ValueError(f'cannot tell the task of this config (default_scope={scope!r}); '
                         'expected an mmpretrain, mmdet or mmseg config')
    return scope


def build_model(cfg):
    """``(model, scope)``: the config's model on CPU, eval mode, without loading any checkpoint."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope

    import vssm_mm  # noqa: F401  (registers the vssm_mm scope)
    scope = task_scope(cfg)
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    cfg.model.pop('pretrained', None)
    init_default_scope(scope)
    if cfg.get('data_preprocessor') is not None:
        cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model)
    return revert_sync_batchnorm(model).eval(), scope
