"""Install vssm_mm and build its selective-scan extensions from csrc/.

* ``vssm_mm._C_cpu`` (csrc/cpu/, C++ only) is built by every install that has torch and a C++
  compiler; it is the default selective scan for CPU tensors. Without a compiler, or if it does
  not compile, the install still succeeds, says why once, and CPU tensors use the pure-PyTorch
  'reference' backend. ``VSSM_NO_CPU_EXT=1`` skips it.
* ``vssm_mm._C`` (csrc/selective_scan/, CUDA) is built only when ``FORCE_CUDA=1`` is set, or when
  torch is a CUDA build, ``CUDA_HOME`` points at a toolkit and ``TORCH_CUDA_ARCH_LIST`` is set.
  The GPU is never queried at build time, so builds on GPU-less login nodes and CI machines
  behave exactly like builds on GPU nodes.

    pip install -e . --no-build-isolation                                    # + the CPU kernels
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" pip install -e . --no-build-isolation
"""
import glob
import os
import shutil
import sys
import sysconfig

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
    sources = sorted(path for path in
                     glob.glob(os.path.join('csrc', '**', '*.cu'), recursive=True) +
                     glob.glob(os.path.join('csrc', '**', '*.cpp'), recursive=True)
                     if not path.startswith(os.path.join('csrc', 'cpu', '')))
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
    cxx_std = _cxx_std(torch)
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


def _cxx_std(torch):
    torch_major_minor = tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
    return '-std=c++20' if torch_major_minor >= (2, 13) else '-std=c++17'


def _skip_cpu(reason):
    print(f'[vssm_mm] not building the CPU selective-scan kernels (vssm_mm._C_cpu): {reason}. '
          "The package works without them: CPU tensors use the 'reference' backend, which is "
          'several times slower. To build them, install a C++ compiler and reinstall with '
          'pip install -e . --no-build-isolation', file=sys.stderr)
    return None


def _compiler():
    """The C++ compiler setuptools will call, or None when there is none."""
    cxx = os.environ.get('CXX') or sysconfig.get_config_var('CXX') or 'c++'
    return shutil.which(cxx.split()[0])


def cpu_extension():
    """The C++ extension with the CPU kernels (every install), or None with a message."""
    if os.environ.get('VSSM_NO_CPU_EXT', '0') == '1':
        return _skip_cpu('VSSM_NO_CPU_EXT=1')
    try:
        import torch
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        return _skip_cpu('torch is not importable in the build environment (install torch '
                         'first and use --no-build-isolation)')
    if _compiler() is None:
        return _skip_cpu('no C++ compiler found (set CXX or install g++ / clang++)')
    sources = sorted(glob.glob(os.path.join('csrc', 'cpu', '*.cpp')))
    flags = ['-O3', _cxx_std(torch), '-ffp-contract=fast', '-Wno-psabi']
    link = []
    # at::parallel_for is inline; with torch's OpenMP backend it needs OpenMP here too. On Linux
    # torch ships libgomp.so.1 under the soname the compiler links, so one runtime is shared.
    if sys.platform.startswith('linux') and 'OpenMP' in torch.__config__.parallel_info():
        flags.append('-fopenmp')
        link.append('-fopenmp')
    ext = CppExtension(name='vssm_mm._C_cpu', sources=sources,
                       include_dirs=[os.path.join(ROOT, 'csrc', 'cpu')],
                       extra_compile_args={'cxx': flags}, extra_link_args=link)
    ext.optional_reason = 'the CPU selective-scan kernels'
    return ext


def build_ext_class(base):
    """``base`` (torch's BuildExtension) that turns a failed optional extension into a message."""

    def last_line(err):
        text = str(err).strip()
        return f'{type(err).__name__}: {text.splitlines()[-1] if text else ""}'

    class BuildExt(base):

        def build_extensions(self):
            self.skipped = set()
            try:
                super().build_extensions()
            except Exception as err:  # e.g. torch's compiler check fails before any build
                if any(getattr(ext, 'optional_reason', None) is None for ext in self.extensions):
                    raise
                _skip_cpu(f'the C++ compiler does not work ({last_line(err)})')
                self.skipped = {ext.name for ext in self.extensions}
            # Later steps (copying built modules into the source tree) must not look for them.
            self.extensions = [ext for ext in self.extensions if ext.name not in self.skipped]

        def build_extension(self, ext):
            reason = getattr(ext, 'optional_reason', None)
            if reason is None:
                return super().build_extension(ext)
            try:
                return super().build_extension(ext)
            except Exception as err:  # a compiler error of any kind: keep the install going
                _skip_cpu(f'compiling {reason} failed ({last_line(err)})')
                self.skipped.add(ext.name)
                return None

    return BuildExt


ext_modules, cmdclass = cuda_extensions()
_cpu_ext = cpu_extension()
if _cpu_ext is not None:
    from torch.utils.cpp_extension import BuildExtension
    ext_modules = ext_modules + [_cpu_ext]
    base = cmdclass.get('build_ext', BuildExtension.with_options(use_ninja=True))
    cmdclass = dict(cmdclass, build_ext=build_ext_class(base))

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
