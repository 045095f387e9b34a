"""glibc malloc settings for CPU runs: reuse freed memory instead of faulting in fresh pages.

PyTorch allocates CPU tensors with ``malloc``. glibc serves a block above its mmap threshold
(which adapts between 128 KiB and 32 MiB) with freshly mapped pages and unmaps them when the
block is freed, and it returns freed memory at the top of the heap to the kernel once more than
``M_TRIM_THRESHOLD`` is free. A forward pass then touches most of its multi-megabyte
activations as new pages, one page fault per 4 KiB, every iteration: on a 2-core virtual
machine LocalVim-T inference (batch 8, cpu scan backend) ran at 6.8 images/s with glibc's
defaults and 15.1 images/s with :func:`reuse_freed_memory` (docs/benchmarks.md).

``tools/train.py``, ``tools/test.py``, ``tools/benchmark.py`` and the demos call it; call it at
the start of your own scripts, or set ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=1073741824`` in the environment. The cost: memory a run has freed stays
with the process for reuse (its peak resident size does not change). ``VSSM_MALLOC_DEFAULTS=1``
keeps glibc's defaults.
"""
import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (glibc's largest mmap threshold on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Free memory the heap keeps before giving any back.
TRIM_THRESHOLD = 1024 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring).

    Returns whether the settings were applied: not with ``VSSM_MALLOC_DEFAULTS=1``, not when
    the environment already sets ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``
    (those win), and not outside Linux with glibc.
    """
    if os.environ.get('VSSM_MALLOC_DEFAULTS') == '1' or not sys.platform.startswith('linux'):
        return False
    if 'MALLOC_MMAP_THRESHOLD_' in os.environ or 'MALLOC_TRIM_THRESHOLD_' in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library the process already uses
        libc.gnu_get_libc_version  # glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
