from .mmengine_hook import install_mmengine_loader
from .safe_load import (TRUST_ENV, CorruptCheckpointError, UnsafeCheckpointError,
                        allowed_globals, safe_load)

__all__ = ['safe_load', 'UnsafeCheckpointError', 'CorruptCheckpointError', 'allowed_globals',
           'install_mmengine_loader', 'TRUST_ENV']
