"""Backbones registered in the ``vssm_mm`` scope (imported lazily by the registry)."""
from . import backbones  # noqa: F401
from . import classifiers  # noqa: F401
from . import necks  # noqa: F401
