"""Install vssm_mm; build the selective-scan CUDA extension from csrc/ when asked for.

The pure-Python package installs everywhere. The extension ``vssm_mm._C`` is built only when
``FORCE_CUDA=1`` is set, or when torch is a CUDA build, ``CUDA_HOME`` points at a toolkit and
``TORCH_CUDA_ARCH_LIST`` is set. The GPU is never queried at build time, so builds on GPU-less
login nodes and CI machines behave exactly like builds on GPU nodes.

    pip install -e . --no-build-isolation                                    # pure Python
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" pip install -e . --no-build-isolation
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = '8.0;8.6;9.0+PTX'


def read_version():
    namespace = {}
    with open(os.path.join(ROOT, 'vssm_mm', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def _skip(reason):
    print(f'[vssm_mm] skipping the CUDA extension: {reason}. The package works without it '
          "(selective_scan uses the 'triton' or 'reference' backend). To build it: "
          'FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" CUDA_HOME=/path/to/cuda '
          'pip install -e . --no-build-isolation', file=sys.stderr)
    return [], {}


def _usable_toolkit(cuda_home):
    """A CUDA toolkit root with the runtime headers: ``cuda_home`` or /usr/local/cuda."""
    for root in (cuda_home, '/usr/local/cuda'):
        if root and os.path.isfile(os.path.join(root, 'include', 'cuda_runtime_api.h')):
            return root
    return None


def cuda_extensions():
    """Return (ext_modules, cmdclass) for the CUDA extension, or empty ones with a message."""
    sources = sorted(glob.glob(os.path.join('csrc', '**', '*.cu'), recursive=True) +
                     glob.glob(os.path.join('csrc', '**', '*.cpp'), recursive=True))
    force = os.environ.get('FORCE_CUDA', '0') == '1'
    if os.environ.get('VSSM_NO_CUDA', '0') == '1':
        return _skip('VSSM_NO_CUDA=1')
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if force:
            raise RuntimeError('FORCE_CUDA=1 needs torch installed first; install without build '
                               'isolation: pip install -e . --no-build-isolation')
        return _skip('torch is not importable in the build environment (use --no-build-isolation)')
    if not sources:
        if force:
            raise RuntimeError('FORCE_CUDA=1 but csrc/ holds no .cu/.cpp sources')
        return _skip('csrc/ holds no sources yet')
    if torch.version.cuda is None:
        if force:
            raise RuntimeError(f'FORCE_CUDA=1 but torch {torch.__version__} is not a CUDA build')
        return _skip(f'torch {torch.__version__} is not a CUDA build')
    if CUDA_HOME is None:
        if force:
            raise RuntimeError('FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the '
                               'toolkit root (the directory holding bin/nvcc)')
        return _skip('no CUDA toolkit found (set CUDA_HOME)')
    cuda_home = _usable_toolkit(CUDA_HOME)
    if cuda_home is None:
        message = (f'the CUDA toolkit at {CUDA_HOME} has no include/cuda_runtime_api.h; set '
                   'CUDA_HOME to the toolkit root (the directory holding bin/nvcc and include/)')
        if force:
            raise RuntimeError('FORCE_CUDA=1 but ' + message)
        return _skip(message)
    if cuda_home != CUDA_HOME:
        # nvcc on PATH can be a wrapper outside the toolkit; point torch at the real root.
        import torch.utils.cpp_extension as cpp_extension
        cpp_extension.CUDA_HOME = cuda_home
        os.environ['CUDA_HOME'] = cuda_home
    if not force and not os.environ.get('TORCH_CUDA_ARCH_LIST'):
        return _skip('neither FORCE_CUDA=1 nor TORCH_CUDA_ARCH_LIST is set')
    # Without this torch would ask the driver for the visible GPUs' architectures.
    os.environ.setdefault('TORCH_CUDA_ARCH_LIST', DEFAULT_ARCH_LIST)
    torch_major_minor = tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
    cxx_std = '-std=c++20' if torch_major_minor >= (2, 13) else '-std=c++17'
    print(f"[vssm_mm] building the CUDA extension for TORCH_CUDA_ARCH_LIST="
          f"{os.environ['TORCH_CUDA_ARCH_LIST']} with {cuda_home} ({cxx_std}, "
          f"MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')})", file=sys.stderr)
    ext = CUDAExtension(
        name='vssm_mm._C',
        sources=sources,
        include_dirs=[os.path.join(ROOT, 'csrc')],
        extra_compile_args={
            'cxx': ['-O3', cxx_std],
            'nvcc': ['-O3', cxx_std, '--use_fast_math', '-lineinfo', '--expt-relaxed-constexpr',
                     '--expt-extended-lambda', '-U__CUDA_NO_HALF_OPERATORS__',
                     '-U__CUDA_NO_HALF_CONVERSIONS__', '-U__CUDA_NO_BFLOAT16_OPERATORS__',
                     '-U__CUDA_NO_BFLOAT16_CONVERSIONS__'],
        })
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()

setup(
    name='vssm_mm',
    version=read_version(),
    description='Visual state-space (Mamba) backbones for OpenMMLab: EfficientVMamba, MSVMamba, '
                'LocalMamba and GroupMamba',
    long_description=open(os.path.join(ROOT, 'README.md')).read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['vssm_mm', 'vssm_mm.*']),
    install_requires=['torch>=2.1', 'mmengine>=0.10.0,<1.0.0'],
    extras_require={
        'tasks': ['mmcv>=2.0.0,<2.2.0', 'mmpretrain>=1.2.0', 'mmdet>=3.3.0', 'mmsegmentation>=1.2.2',
                  'ftfy', 'regex'],
        'tests': ['pytest', 'pytest-timeout'],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
