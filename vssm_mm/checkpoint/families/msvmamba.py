"""Official MSVMamba checkpoints: same names as ours; the classifier maps onto outnorm3/head."""
from ..convert import ArchSpec, register_arch

CLASSIFIER_KEYS = {'classifier.norm.': 'backbone.outnorm3.', 'classifier.head.': 'head.fc.'}

for name, arch in [('msvmamba-n', 'nano'), ('msvmamba-m', 'micro'), ('msvmamba-t', 'tiny'),
                   ('msvmamba2-t', 'v2_tiny'), ('msvmamba2-s', 'v2_small'),
                   ('msvmamba2-b', 'v2_base')]:
    register_arch(name, ArchSpec(backbone='MSVMamba', arch=arch, classifier_keys=CLASSIFIER_KEYS))
