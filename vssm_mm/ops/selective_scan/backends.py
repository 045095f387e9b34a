"""Registry of selective-scan backends and the rule that picks one.

Backends are imported only when first used, so a missing Triton or compiled
extension costs nothing unless it is asked for. A backend is a module with
three functions:

* ``forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, out_float32)
  -> (out, last_state, saved, meta)``. Inputs are already validated: u, delta,
  z (batch, channels, L), B/C (batch, G, N, L), A (channels, N), D (channels),
  delta_bias (delta channels); optional ones None. ``saved`` is a tuple of
  exactly one tensor for ``ctx.save_for_backward``, ``meta`` non-tensor data
  (None for every backend here, which the ``torch.compile`` path relies on).
* ``backward(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias,
  delta_softplus, saved, meta) -> (du, ddelta, dA, dB, dC, dD, dz,
  ddelta_bias)``: ``dout``/``dlast_state`` may be None; gradients in the dtypes
  of the inputs, None for inputs that were None.
* ``saved_state_spec(u, A, B) -> (shape, dtype)`` of the saved tensor, which
  the ``torch.compile`` fake implementation (:mod:`.library`) allocates
  without running anything.
"""
import importlib
import importlib.util
import os
import sys

import torch

ENV_VAR = 'VSSM_SCAN_BACKEND'
BACKENDS = ('reference', 'cpu', 'triton', 'cuda')
CPU_BUILD_HINT = ('it is built by `pip install -e . --no-build-isolation` (or '
                  '`make install`) when a C++ compiler is found; the install '
                  'log says why it was skipped')
CUDA_BUILD_HINT = ("build it with `FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST='8.0;9.0' "
                   'pip install -e . --no-build-isolation` (list the compute '
                   'capabilities of your GPUs)')

_MODULES = {
    'reference': '.reference',
    'cpu': '.cpu_backend',
    'triton': '.triton_backend',
    'cuda': '.cuda_backend',
}


def triton_interpreting():
    """True when TRITON_INTERPRET asks Triton to emulate kernels on the CPU."""
    return os.environ.get('TRITON_INTERPRET', '0').lower() in ('1', 'true',
                                                                 'on', 'yes')


def _triton_interpreter_error():
    """Triton decides at import time whether its own library is interpreted:
    TRITON_INTERPRET=1 set after ``import triton`` yields kernels that fail
    at launch, so refuse early with the fix."""
    if not triton_interpreting():
        return None
    if 'triton' not in sys.modules:
        return None
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction
    if isinstance(standard.zeros, InterpretedFunction):
        return None
    return ('TRITON_INTERPRET=1 was set after triton had been imported; set '
            'it in the environment before the Python process starts')


# Under torch.compile the answer is computed once while tracing and kept as a constant
# (dynamo cannot trace importlib).
@torch._dynamo.assume_constant_result
def _cuda_extension_error():
    try:
        ext = importlib.import_module('vssm_mm._C')
    except ImportError as err:
        return f'the CUDA extension vssm_mm._C is not built ({err}); ' + \
            CUDA_BUILD_HINT
    if not hasattr(ext, 'selective_scan_fwd'):
        return ('vssm_mm._C has no selective_scan_fwd (it was built without '
                'the selective-scan kernels); rebuild: ' + CUDA_BUILD_HINT)
    return None


@torch._dynamo.assume_constant_result
def _cpu_extension_error():
    try:
        importlib.import_module('vssm_mm._C_cpu')
    except ImportError as err:
        return (f'the CPU extension vssm_mm._C_cpu is not built ({err}); ' +
                CPU_BUILD_HINT)
    return None


def unavailable_reason(name, device):
    """Why backend ``name`` cannot run on ``device``; None if it can.

    Args:
        name (str): one of :data:`BACKENDS`.
        device (torch.device | str): the device of the tensors.
    """
    device = torch.device(device)
    if name == 'reference':
        return None
    if name == 'cpu':
        if device.type != 'cpu':
            return (f'the CPU kernels run on CPU tensors, got {device.type} '
                    'tensors')
        return _cpu_extension_error()
    if name == 'triton':
        if importlib.util.find_spec('triton') is None:
            return 'Triton is not installed (`pip install triton`)'
        if device.type == 'cuda':
            return None
        if triton_interpreting():
            return _triton_interpreter_error()
        return (f'Triton kernels run on CUDA tensors, got {device.type} '
                'tensors; set TRITON_INTERPRET=1 to emulate them on the CPU '
                "(slow, for tests) or use backend='reference'")
    if name == 'cuda':
        if device.type != 'cuda':
            return (f'the CUDA extension runs on CUDA tensors, got '
                    f'{device.type} tensors')
        return _cuda_extension_error()
    raise ValueError(_unknown(name))


def available_backends(device=None):
    """Names of the backends that can run here.

    Args:
        device (torch.device | str | None): restrict to backends that accept
            tensors on this device. None means "on any device of this
            machine" (CUDA if one is visible, else the CPU).

    Returns:
        list[str]: a subset of ``['reference', 'cpu', 'triton', 'cuda']``.
    """
    if device is None:
        devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    else:
        devices = [device]
    return [
        name for name in BACKENDS
        if any(unavailable_reason(name, d) is None for d in devices)
    ]


def _unknown(name):
    valid = ', '.join(repr(n) for n in ('auto', ) + BACKENDS)
    return f'Unknown selective-scan backend {name!r}; valid names: {valid}'


def resolve_backend(backend, device):
    """Turn ``backend`` (argument, env var or 'auto') into a usable name.

    Precedence: an explicit ``backend`` argument, else ``$VSSM_SCAN_BACKEND``,
    else 'auto'. 'auto' picks 'cuda' if the extension is built and the tensors
    are on a GPU, else 'triton' if the tensors are on a GPU; for CPU tensors
    'cpu' if ``vssm_mm._C_cpu`` is built; else 'reference'.
    An explicit name that cannot run raises instead of falling back.

    Raises:
        ValueError: for an unknown name.
        RuntimeError: for a known backend that is not available here.
    """
    source = 'backend argument'
    if backend is None or backend == 'auto':
        env = os.environ.get(ENV_VAR, '').strip()
        if env and env != 'auto':
            backend, source = env, f'${ENV_VAR}'
        else:
            backend = 'auto'
    name = backend.strip().lower()
    device = torch.device(device)
    if name == 'auto':
        if device.type == 'cuda':
            for candidate in ('cuda', 'triton'):
                if unavailable_reason(candidate, device) is None:
                    return candidate
        elif device.type == 'cpu' and _cpu_extension_error() is None:
            return 'cpu'
        return 'reference'
    if name not in BACKENDS:
        raise ValueError(_unknown(backend) + f' (from the {source})')
    reason = unavailable_reason(name, device)
    if reason is not None:
        usable = available_backends(device)
        raise RuntimeError(
            f'selective_scan backend {name!r} (from the {source}) is not '
            f'available: {reason}. Backends available for {device.type} '
            f'tensors: {usable}.')
    return name


def load_backend(name):
    """Import and return the module implementing backend ``name``."""
    return importlib.import_module(_MODULES[name], __package__)
