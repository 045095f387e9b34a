"""Training recipes match the official runs where mmpretrain's presets differ from them."""
import pytest
from vssm_testing import REPO, has_mm_stack


def _rand_augment(config):
    from mmengine.config import Config
    cfg = Config.fromfile(str(REPO / config))
    pipeline = cfg.train_dataloader.dataset.pipeline
    return next(t for t in pipeline if t['type'] == 'RandAugment')


def _magnitude_at(policy, level):
    """The magnitude one policy of the RandAugment gets at ``level`` (no noise)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import TRANSFORMS
    policy = dict(policy, magnitude_level=level, magnitude_std=0, total_level=10)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        transform = TRANSFORMS.build(policy)  # random_magnitude holds it by a weak reference
        return transform.random_magnitude()


# timm's original ('rand-m9-mstd0.5', no '-inc1') level -> argument mapping, for level in [0, 10].
TIMM_ORIGINAL = {
    'Posterize': lambda level: int(level / 10 * 4),
    'Solarize': lambda level: level / 10 * 256,
    'ColorTransform': lambda level: level / 10 * 1.8 + 0.1 - 1,
    'Contrast': lambda level: level / 10 * 1.8 + 0.1 - 1,
    'Brightness': lambda level: level / 10 * 1.8 + 0.1 - 1,
    'Sharpness': lambda level: level / 10 * 1.8 + 0.1 - 1,
    'Rotate': lambda level: level / 10 * 30,
    'SolarizeAdd': lambda level: level / 10 * 110,
}


@pytest.mark.parametrize('config', ['configs/localmamba/localvim_tiny_in1k.py',
                                    'configs/localmamba/localvmamba_tiny_in1k.py',
                                    'configs/efficientvmamba/tiny_in1k.py'])
def test_rand_augment_is_timms_original_mapping(config):
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    import math
    augment = _rand_augment(config)
    assert (augment['magnitude_level'], augment['magnitude_std'], augment['num_policies']) == \
        (9, 0.5, 2)
    policies = {p['type']: p for p in augment['policies']}
    assert len(augment['policies']) == 15
    for name, timm_value in TIMM_ORIGINAL.items():
        for level in (1.3, 5.0, 8.6, 9.0, 9.7, 10.0):
            ours = _magnitude_at(policies[name], level)
            if name == 'Posterize':
                ours = math.ceil(ours)  # what mmpretrain's Posterize applies
            assert ours == pytest.approx(timm_value(level), abs=1e-6), (name, level)
        if name in ('ColorTransform', 'Contrast', 'Brightness', 'Sharpness'):
            assert policies[name].get('random_negative_prob') == 0.0, name


def test_other_families_keep_the_increasing_mapping():
    if not has_mm_stack('mmpretrain'):
        pytest.skip('mmpretrain is not installed')
    assert _rand_augment('configs/msvmamba/tiny_in1k.py')['policies'] == 'timm_increasing'
