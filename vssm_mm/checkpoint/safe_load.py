"""Load checkpoints without running arbitrary pickled code.

``torch.load`` unpickles. A pickle can name any importable callable and have it called (for
example ``os.system``), so loading a file from the internet with ``weights_only=False`` runs
whatever its author wanted. torch's own ``weights_only=True`` is safe but refuses what mmengine
writes into its checkpoints (``HistoryBuffer``, numpy arrays in the message hub) and what the
official Mamba-family trainers write (a yacs ``CfgNode``, an ``argparse.Namespace``).

:func:`safe_load` uses an unpickler whose ``find_class`` only returns globals from an explicit
allow-list: tensor/storage rebuilders, containers, numpy arrays/scalars/dtypes, mmengine's
``HistoryBuffer`` and inert stand-ins for config objects (a yacs ``CfgNode`` is read back as a
plain ``dict`` subclass, so yacs need not be installed). Anything else is refused with an error
that names the global and the file. Two containers reach code before any unpickler is
consulted, so they are refused before ``torch.load`` sees them: TorchScript archives (which
``torch.load`` hands to ``torch.jit.load``) and the legacy tar format. Empty, truncated and
random files get an error that names the file. Files you trust can be loaded unrestricted
with ``trust=True`` or the environment variable ``VSSM_TRUST_CHECKPOINTS=1``.
"""
import argparse
import collections
import contextlib
import copyreg
import io
import os
import pickle
import tarfile
import types
import zipfile
from typing import Any, Optional

import torch

TRUST_ENV = 'VSSM_TRUST_CHECKPOINTS'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """Raised when a checkpoint asks for a global that is not on the allow-list."""


class PlainConfigNode(dict):
    """Inert stand-in for a yacs ``CfgNode`` (a ``dict`` subclass): the values, no code."""

    def __setstate__(self, state):
        # yacs CfgNode keeps its flags in __dict__; keep them out of the mapping itself.
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


class PlainNamespace(argparse.Namespace):
    """Inert stand-in for ``argparse.Namespace`` pickled by official trainers."""


def _numpy_globals():
    allowed = {}
    try:
        import numpy as np
    except ImportError:
        return allowed
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[(module, '_reconstruct')] = np._core.multiarray._reconstruct if hasattr(
            np, '_core') else np.core.multiarray._reconstruct
        allowed[(module, 'scalar')] = np._core.multiarray.scalar if hasattr(
            np, '_core') else np.core.multiarray.scalar
    allowed[('numpy', 'ndarray')] = np.ndarray
    allowed[('numpy', 'dtype')] = np.dtype
    for name in dir(np):
        obj = getattr(np, name, None)
        if isinstance(obj, type) and issubclass(obj, np.generic):
            allowed[('numpy', name)] = obj
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                allowed[('numpy.dtypes', name)] = obj
    return allowed


def _torch_globals():
    import torch._utils as tu
    allowed = {
        ('torch._utils', '_rebuild_tensor'): tu._rebuild_tensor,
        ('torch._utils', '_rebuild_tensor_v2'): tu._rebuild_tensor_v2,
        ('torch._utils', '_rebuild_parameter'): tu._rebuild_parameter,
        ('torch._utils', '_rebuild_parameter_with_state'): tu._rebuild_parameter_with_state,
        ('torch._utils', '_rebuild_device_tensor_from_numpy'): tu._rebuild_device_tensor_from_numpy,
        ('torch._tensor', '_rebuild_from_type_v2'): torch._tensor._rebuild_from_type_v2,
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
        ('torch', 'Tensor'): torch.Tensor,
        ('torch.nn.parameter', 'Parameter'): torch.nn.Parameter,
    }
    for name in ('_rebuild_qtensor', '_rebuild_sparse_tensor', '_rebuild_meta_tensor_no_storage',
                 '_rebuild_wrapper_subclass', '_rebuild_nested_tensor'):
        if hasattr(tu, name):
            allowed[('torch._utils', name)] = getattr(tu, name)
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[('torch', name)] = obj
    return allowed


def _builtin_globals():
    allowed = {('collections', 'OrderedDict'): collections.OrderedDict,
               ('collections', 'defaultdict'): collections.defaultdict,
               ('collections', 'deque'): collections.deque,
               ('copyreg', '_reconstructor'): copyreg._reconstructor,
               ('argparse', 'Namespace'): PlainNamespace,
               ('yacs.config', 'CfgNode'): PlainConfigNode,
               ('pathlib', 'PosixPath'): __import__('pathlib').PurePosixPath,
               ('pathlib', 'WindowsPath'): __import__('pathlib').PureWindowsPath,
               ('datetime', 'datetime'): __import__('datetime').datetime,
               ('datetime', 'timedelta'): __import__('datetime').timedelta,
               ('_codecs', 'encode'): __import__('codecs').encode}
    for name in ('object', 'set', 'frozenset', 'slice', 'complex', 'range', 'bytearray', 'dict',
                 'list', 'tuple', 'int', 'float', 'bool', 'str', 'bytes'):
        allowed[('builtins', name)] = getattr(__import__('builtins'), name)
        allowed[('__builtin__', name)] = getattr(__import__('builtins'), name)
    return allowed


def _history_buffer_getattr(obj, name):
    """``getattr`` restricted to the statistics methods a pickled HistoryBuffer refers to.

    A HistoryBuffer pickles its ``{name: method}`` table as ``getattr(HistoryBuffer, name)``
    calls. A general ``getattr`` would let a pickle walk from any allowed object to
    arbitrary callables, so only the registered statistics methods are served.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    is_buffer = isinstance(obj, HistoryBuffer) or (isinstance(obj, type) and
                                                    issubclass(obj, HistoryBuffer))
    # The class-level table is filled lazily by the first HistoryBuffer, so also name the
    # defaults explicitly.
    allowed = {'min', 'max', 'mean', 'current'} | set(HistoryBuffer._statistics_methods)
    if is_buffer and name in allowed:
        return getattr(obj, name)
    raise UnsafeCheckpointError(
        f'refusing getattr({obj!r:.60}, {name!r}) while unpickling: only the statistics '
        f'methods of HistoryBuffer are allowed. Set {TRUST_ENV}=1 for files you trust.')


def _mmengine_globals():
    allowed = {}
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
        allowed[('mmengine.logging.history_buffer', 'HistoryBuffer')] = HistoryBuffer
        allowed[('builtins', 'getattr')] = _history_buffer_getattr
        allowed[('__builtin__', 'getattr')] = _history_buffer_getattr
    except ImportError:
        pass
    try:
        from mmengine.config import ConfigDict
        allowed[('mmengine.config.config', 'ConfigDict')] = ConfigDict
    except ImportError:
        pass
    return allowed


_ALLOWED = None


def allowed_globals():
    """The ``{(module, name): object}`` allow-list of the restricted unpickler."""
    global _ALLOWED
    if _ALLOWED is None:
        allowed = {}
        for part in (_builtin_globals, _torch_globals, _numpy_globals, _mmengine_globals):
            allowed.update(part())
        _ALLOWED = allowed
    return _ALLOWED


def _make_pickle_module(filename: str) -> types.ModuleType:
    """A module-like object for ``torch.load(pickle_module=...)`` with a restricted Unpickler."""

    class RestrictedUnpickler(pickle.Unpickler):

        def find_class(self, module, name):
            obj = allowed_globals().get((module, name))
            if obj is None:
                raise UnsafeCheckpointError(
                    f"refusing to load '{filename}': it asks for the global '{module}.{name}', "
                    'which is not on the allow-list of tensors, containers, numpy arrays and '
                    'known config objects. If you trust this file, load it with trust=True or '
                    f'set {TRUST_ENV}=1 (that lets it run arbitrary code).')
            return obj

    module = types.ModuleType('vssm_mm_restricted_pickle')
    module.Unpickler = RestrictedUnpickler
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    module.loads = lambda data, **kwargs: RestrictedUnpickler(io.BytesIO(data), **kwargs).load()
    module.__name__ = 'vssm_mm_restricted_pickle'
    return module


def is_trusted(trust: Optional[bool] = None) -> bool:
    if trust is not None:
        return trust
    return os.environ.get(TRUST_ENV, '0').lower() in ('1', 'true', 'yes')


class CorruptCheckpointError(ValueError):
    """The file is empty, truncated or not a checkpoint at all."""


_ZIP_MAGIC = b'PK\x03\x04'


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, 'name', None) or '<in-memory checkpoint>'


def _check_container(stream, name: str) -> None:
    """Refuse the containers that reach code before any unpickler is consulted.

    * A TorchScript archive (``torch.jit.save``): ``torch.load`` hands it to ``torch.jit.load``,
      which runs the archive's compiled code (``__setstate__`` of its classes) while loading.
    * The legacy tar format (PyTorch < 0.4): rarely seen today and extracted to disk by torch.

    Both are refused unless trusted. Empty and truncated files get an error that names them.
    """
    start = stream.tell()
    head = stream.read(len(_ZIP_MAGIC))
    stream.seek(start)
    if not head:
        raise CorruptCheckpointError(
            f"cannot load '{name}': the file is empty (0 bytes). It was probably cut off while "
            'being written; use another checkpoint (for a training run, --resume picks the '
            'newest complete one in the work dir).')
    if head == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(stream) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise CorruptCheckpointError(
                f"cannot load '{name}': it is a truncated or damaged zip archive ({err}). Was "
                'the download or the save interrupted? Use another copy of the file.') from None
        finally:
            stream.seek(start)
        records = {entry.split('/', 1)[1] for entry in names if '/' in entry}
        if 'constants.pkl' in records or any(r.startswith('code/') for r in records):
            raise UnsafeCheckpointError(
                f"refusing to load '{name}': it is a TorchScript archive (torch.jit.save), and "
                'loading one runs the code compiled into it. Checkpoints are saved with '
                "torch.save(model.state_dict(), ...). If you trust this file, load it with "
                f'torch.jit.load yourself, or set {TRUST_ENV}=1 (that lets it run arbitrary code).')
        return
    try:
        is_tar = tarfile.is_tarfile(stream)
    finally:
        stream.seek(start)
    if is_tar:
        raise UnsafeCheckpointError(
            f"refusing to load '{name}': it is in the legacy tar format of PyTorch < 0.4, which "
            'is not read without trust. Re-save it with a current torch from a session you '
            f'trust, or set {TRUST_ENV}=1 (that lets it run arbitrary code).')


@contextlib.contextmanager
def _open(source):
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        with open(source, 'rb') as stream:
            yield stream
    else:
        yield source


def safe_load(filename, map_location: Any = 'cpu', trust: Optional[bool] = None):
    """Load a checkpoint with the restricted unpickler.

    Args:
        filename (str | os.PathLike | bytes | file-like): A file written by ``torch.save``,
            its bytes, or an open binary stream (remote schemes read into memory).
        map_location: Passed to ``torch.load``. Defaults to ``'cpu'``.
        trust (bool, optional): ``True`` loads with plain pickle (only for files you trust);
            ``None`` reads the ``VSSM_TRUST_CHECKPOINTS`` environment variable.

    Returns:
        The unpickled object.

    Raises:
        FileNotFoundError: If the file does not exist.
        UnsafeCheckpointError: If the file names a global outside the allow-list, or is a
            TorchScript archive or a legacy tar file (both reach code before any unpickler).
        CorruptCheckpointError: If the file is empty, truncated or not a checkpoint.
    """
    name = _describe(filename)
    if isinstance(filename, (str, os.PathLike)):
        if os.path.isdir(filename):
            raise IsADirectoryError(f"checkpoint '{name}' is a directory; name a .pth file in it")
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'checkpoint not found: {name}')
    if is_trusted(trust):
        return torch.load(filename, map_location=map_location, weights_only=False)
    with _open(filename) as stream:
        _check_container(stream, name)
        try:
            return torch.load(stream, map_location=map_location, weights_only=False,
                              pickle_module=_make_pickle_module(name))
        except UnsafeCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, TypeError,
                KeyError, IndexError, AttributeError, MemoryError, OverflowError) as err:
            # Random bytes can read as a pickle opcode that asks for gigabytes: MemoryError.
            raise CorruptCheckpointError(
                f"cannot load '{name}': it is not a PyTorch checkpoint, or it is truncated or "
                f'damaged ({type(err).__name__}: {str(err)[:200]}). Check that the path names '
                'the checkpoint you meant and that its download or save finished.') from err
