#!/usr/bin/env python
"""Compile-and-link check of the CUDA extension (csrc/) on a machine without a GPU.

Builds ``vssm_mm._C`` into a temporary directory (nothing is installed or written into the
repository), then imports it in a fresh process, which resolves every symbol against torch and
the CUDA runtime, and checks the entry points the 'cuda' backend calls. A passing result is
remembered under ``~/.cache/vssm_mm/cuda-build-check/`` keyed by a hash of the sources in csrc/, setup.py,
the torch and nvcc versions and the architecture list, so an unchanged csrc/ costs no time.

    python tools/check_cuda_build.py                 # skips (exit 0) when there is no nvcc
    python tools/check_cuda_build.py --require       # fails when there is no nvcc
    TORCH_CUDA_ARCH_LIST="8.0;9.0" python tools/check_cuda_build.py --force

Exit status: 0 when the extension builds and links (or the check is skipped), 1 otherwise.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE_SUFFIXES = ('.cu', '.cuh', '.cpp', '.cc', '.h', '.hpp')  # what the build reads
ENTRY_POINTS = ('selective_scan_fwd', 'selective_scan_bwd', 'chunk_length')


def _toolkit(root):
    """``root`` if it is a CUDA toolkit (nvcc and the runtime headers), else None."""
    root = Path(root)
    ok = (root / 'bin' / 'nvcc').is_file() and (root / 'include' / 'cuda_runtime_api.h').is_file()
    return root if ok else None


def find_toolkit():
    """The CUDA toolkit root: $CUDA_HOME, then nvcc on PATH, then /usr/local/cuda."""
    candidates = [os.environ.get('CUDA_HOME'), os.environ.get('CUDA_PATH')]
    nvcc = shutil.which('nvcc')
    if nvcc:
        # nvcc may be a wrapper script outside the toolkit; follow links, then look around.
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append('/usr/local/cuda')
    for root in candidates:
        if root and _toolkit(root):
            return Path(root)
    return None


def source_files():
    # csrc/cpu/ is the separate CPU extension; it does not go into vssm_mm._C.
    files = sorted(p for p in (REPO / 'csrc').rglob('*')
                   if p.is_file() and p.suffix in SOURCE_SUFFIXES
                   and (REPO / 'csrc' / 'cpu') not in p.parents)
    return files + [REPO / 'setup.py']


def fingerprint(nvcc, arch_list):
    import torch
    digest = hashlib.sha256()
    for path in source_files():
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    nvcc_version = subprocess.run([str(nvcc), '--version'], capture_output=True,
                                  text=True).stdout
    for part in (torch.__version__, str(torch.version.cuda), nvcc_version, arch_list,
                 sys.version):
        digest.update(part.encode())
    return digest.hexdigest()[:20]


IMPORT_CHECK = """
import importlib.util, sys
import torch
spec = importlib.util.spec_from_file_location('vssm_mm._C', sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
missing = [name for name in sys.argv[2:] if not hasattr(module, name)]
if missing:
    sys.exit(f'the extension lacks {missing}')
assert module.chunk_length(3136) == 2048 and module.chunk_length(49) == 128
print('linked:', ', '.join(sys.argv[2:]))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--require', action='store_true',
                        help='fail instead of skipping when no CUDA toolkit is found')
    parser.add_argument('--force', action='store_true', help='ignore the cached result')
    parser.add_argument('--keep', metavar='DIR',
                        help='build in DIR and keep it (default: a temporary directory)')
    args = parser.parse_args()

    toolkit = find_toolkit()
    if toolkit is None:
        message = ('no CUDA toolkit (nvcc) found; set CUDA_HOME to check the extension build')
        print(f'[check_cuda_build] skipped: {message}')
        return 1 if args.require else 0
    try:
        import torch
    except ImportError:
        print('[check_cuda_build] torch is not installed', file=sys.stderr)
        return 1
    if torch.version.cuda is None:
        print(f'[check_cuda_build] skipped: torch {torch.__version__} is a CPU-only build')
        return 1 if args.require else 0
    arch_list = os.environ.get('TORCH_CUDA_ARCH_LIST', '9.0')
    nvcc = toolkit / 'bin' / 'nvcc'
    key = fingerprint(nvcc, arch_list)
    cache = Path(os.environ.get('VSSM_CACHE_DIR', Path.home() / '.cache' / 'vssm_mm'))
    stamp = cache / 'cuda-build-check' / f'{key}.ok'
    if stamp.is_file() and not args.force:
        print(f'[check_cuda_build] csrc/ unchanged since a passing build ({stamp.name}); '
              'skipping (use --force to rebuild)')
        return 0

    env = dict(os.environ, FORCE_CUDA='1', TORCH_CUDA_ARCH_LIST=arch_list,
               CUDA_HOME=str(toolkit), MAX_JOBS=os.environ.get('MAX_JOBS', '2'))
    env.pop('VSSM_NO_CUDA', None)
    env['VSSM_NO_CPU_EXT'] = '1'  # only vssm_mm._C is checked here
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='vssm_cuda_check_'))
    work.mkdir(parents=True, exist_ok=True)
    print(f'[check_cuda_build] building vssm_mm._C for TORCH_CUDA_ARCH_LIST={arch_list} '
          f'with {nvcc} (MAX_JOBS={env["MAX_JOBS"]}) in {work}', flush=True)
    start = time.time()
    try:
        build = subprocess.run(
            [sys.executable, 'setup.py', '-q', 'build_ext', '--build-lib', str(work / 'lib'),
             '--build-temp', str(work / 'tmp')],
            cwd=REPO, env=env, capture_output=True, text=True)
        if build.returncode != 0:
            print(build.stdout[-20000:], build.stderr[-20000:], sep='\n', file=sys.stderr)
            print(f'[check_cuda_build] FAILED: the extension does not compile '
                  f'(exit {build.returncode})', file=sys.stderr)
            return 1
        built = sorted((work / 'lib' / 'vssm_mm').glob('_C*.so'))
        if not built:
            print('[check_cuda_build] FAILED: the build produced no vssm_mm/_C*.so',
                  file=sys.stderr)
            return 1
        linked = subprocess.run([sys.executable, '-c', IMPORT_CHECK, str(built[0]),
                                 *ENTRY_POINTS], capture_output=True, text=True)
        if linked.returncode != 0:
            print(linked.stdout, linked.stderr, sep='\n', file=sys.stderr)
            print('[check_cuda_build] FAILED: the extension does not load', file=sys.stderr)
            return 1
        print(f'[check_cuda_build] {linked.stdout.strip()} ({built[0].stat().st_size >> 10} '
              f'KiB, built in {time.time() - start:.0f} s)')
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(f'{time.strftime("%Y-%m-%d %H:%M:%S")} arch={arch_list} '
                     f'torch={torch.__version__}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
