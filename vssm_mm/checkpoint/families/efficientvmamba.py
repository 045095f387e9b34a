"""Official EfficientVMamba checkpoints: same names as ours; the classifier maps onto outnorm3/head.

The released files (Hugging Face ``TerryPei/EfficientVMamba-{Tiny,Small,Base}``) hold one state
dict under ``'state_dict'`` with the ``module.module.`` prefix of an EMA copy of a DDP model
(stripped by the converter); official mmdet/mmseg checkpoints (``MM_EfficientVSSM``) keep their
``backbone.*`` names, which are ours.
"""
from ..convert import ArchSpec, register_arch

CLASSIFIER_KEYS = {'classifier.norm.': 'backbone.outnorm3.', 'classifier.head.': 'head.fc.'}

for name, arch in [('efficientvmamba-t', 'tiny'), ('efficientvmamba-s', 'small'),
                   ('efficientvmamba-b', 'base')]:
    register_arch(name, ArchSpec(backbone='EfficientVMamba', arch=arch,
                                 classifier_keys=CLASSIFIER_KEYS))
