"""Parameters and FLOPs counted the way the four papers count them, without real activations.

The papers count with fvcore (or mmengine's port of it) on a ``torch.jit`` trace: one
multiply-add is one FLOP for convolutions, linear layers, matmul/bmm/einsum; LayerNorm and
GroupNorm count 5 per element, BatchNorm 2 (eval), nearest / bilinear upsampling 1 / 4 per
output element, adaptive average pooling 1 per input element; element-wise ops, activations
and token re-orderings count zero; the selective scan counts ``9 B L D N + B D L`` (+ ``B D L``
with a z gate). Tracing with real tensors needs all activations at once (tens of GB for a
detector at 1280x800).

:class:`FlopCounter` applies the same rules to the same ops, seen one level below Python
(``torch.overrides.TorchFunctionMode``: ``F.linear``, ``F.conv2d``, ``torch.einsum``,
``F.layer_norm``, ``F.interpolate``...; what ``torch.jit.trace`` records as ``aten::linear``,
``aten::_convolution``, ``aten::einsum``, ...), while the model runs on the ``meta`` device:
shapes only, no memory for activations, no arithmetic. ``torch.utils.flop_counter`` works one
level lower (after ``linear`` became ``mm``, adaptive pooling ``mean``, LayerNorm
``native_layer_norm``), where fvcore's rules cannot be told apart any more.
"""
import contextlib
import math
from collections import Counter, OrderedDict
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _arg(args, kwargs, index, name, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _numel(tensor) -> int:
    return math.prod(tensor.shape)


def _linear(args, kwargs, out):
    x, weight = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'weight')
    return _numel(x) * weight.shape[0]


def _conv(transposed):
    def count(args, kwargs, out):
        x, weight = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'weight')
        spatial = (x if transposed else out).shape[2:]
        return x.shape[0] * _numel(weight) * math.prod(spatial)
    return count


def _matmul(args, kwargs, out):
    a, b = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'other')
    a_shape = [1, a.shape[0]] if a.dim() == 1 else list(a.shape)
    last = 1 if b.dim() == 1 else b.shape[-1]
    return math.prod(a_shape) * last


def _bmm(args, kwargs, out):
    a, b = _arg(args, kwargs, 0, 'input'), _arg(args, kwargs, 1, 'mat2')
    return math.prod(a.shape) * b.shape[-1]


def _addmm(args, kwargs, out):
    a, b = _arg(args, kwargs, 1, 'mat1'), _arg(args, kwargs, 2, 'mat2')
    return a.shape[0] * a.shape[1] * b.shape[1]


def _zero_strided(shape):
    """An array of ``shape`` that takes no memory (``np.einsum_path`` reads shapes only)."""
    import numpy as np
    return np.lib.stride_tricks.as_strided(np.zeros(1), shape=tuple(shape),
                                           strides=(0, ) * len(shape))


def _einsum(args, kwargs, out):
    import numpy as np
    equation = args[0].replace(' ', '')
    operands = args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    shapes = [tuple(op.shape) for op in operands]
    # fvcore's handle: rename the letters in order of appearance, two bmm-like special
    # cases, otherwise numpy's optimal contraction cost halved (multiply-adds).
    order = OrderedDict((k, 0) for k in equation if k.isalpha()).keys()
    equation = equation.translate({ord(x): 97 + i for i, x in enumerate(order)})
    if equation == 'abc,abd->acd':
        n, c, t = shapes[0]
        return n * c * t * shapes[-1][-1]
    if equation == 'abc,adc->adb':
        n, t, g = shapes[0]
        return n * t * g * shapes[-1][1]
    path = np.einsum_path(equation, *[_zero_strided(s) for s in shapes], optimize='optimal')[1]
    for line in path.split('\n'):
        if 'optimized flop' in line.lower():
            return int(np.floor(float(line.split(':')[-1]) / 2))
    raise NotImplementedError(f'cannot count einsum {equation!r}')


def _norm(weight_index, weight_name='weight'):
    def count(args, kwargs, out):
        x = _arg(args, kwargs, 0, 'input')
        affine = _arg(args, kwargs, weight_index, weight_name) is not None
        return _numel(x) * (5 if affine else 4)
    return count


def _functional_batch_norm(args, kwargs, out):
    # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...)
    if _arg(args, kwargs, 5, 'training', False):
        return _norm(3)(args, kwargs, out)
    x = _arg(args, kwargs, 0, 'input')
    return _numel(x) * (2 if _arg(args, kwargs, 3, 'weight') is not None else 1)


def _aten_batch_norm(args, kwargs, out):
    # torch.batch_norm(input, weight, bias, running_mean, running_var, training, ...)
    if _arg(args, kwargs, 5, 'training', False):
        return _norm(1)(args, kwargs, out)
    x = _arg(args, kwargs, 0, 'input')
    return _numel(x) * (2 if _arg(args, kwargs, 1, 'weight') is not None else 1)


def _interpolate(args, kwargs, out):
    x = _arg(args, kwargs, 0, 'input')
    mode = _arg(args, kwargs, 3, 'mode', 'nearest')
    if x.dim() != 4 or _arg(args, kwargs, 6, 'antialias', False):
        return 0  # 1d/3d and anti-aliased resampling: fvcore has no rule for them
    # What F.interpolate calls, and fvcore's rule for it.
    return {'nearest': _numel(out), 'bilinear': 4 * _numel(out), 'area': _numel(x)}.get(mode, 0)


def _input_numel(args, kwargs, out):
    return _numel(_arg(args, kwargs, 0, 'input'))


def _output_numel(scale):
    def count(args, kwargs, out):
        return scale * _numel(out)
    return count


def _scan(args, kwargs, out):
    from vssm_mm.ops.selective_scan.flops import selective_scan_op_flops
    return selective_scan_op_flops(*args, **kwargs)


def _rules():
    """{function: (operator name, rule)}: the ops fvcore counts, as torch functions."""
    from vssm_mm.ops.selective_scan import library  # noqa: F401  (registers the op)
    rules = {}

    def add(name, rule, *funcs):
        for func in funcs:
            rules[func] = (name, rule)

    tensor = torch.Tensor
    add('linear', _linear, F.linear)
    add('conv', _conv(False), F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d,
        torch.conv3d)
    add('conv', _conv(True), F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
        torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)
    add('matmul', _matmul, torch.matmul, tensor.matmul, tensor.__matmul__, torch.mm, tensor.mm)
    add('bmm', _bmm, torch.bmm, tensor.bmm)
    add('addmm', _addmm, torch.addmm, tensor.addmm)
    add('einsum', _einsum, torch.einsum)
    add('batch_norm', _functional_batch_norm, F.batch_norm)
    add('batch_norm', _aten_batch_norm, torch.batch_norm)
    add('layer_norm', _norm(2), F.layer_norm, torch.layer_norm)
    add('group_norm', _norm(2), F.group_norm, torch.group_norm)
    add('instance_norm', _norm(3), F.instance_norm)
    add('instance_norm', _norm(1), torch.instance_norm)
    add('upsample', _interpolate, F.interpolate)
    add('upsample', _output_numel(1), torch._C._nn.upsample_nearest2d)
    add('upsample', _output_numel(4), torch._C._nn.upsample_bilinear2d)
    add('adaptive_avg_pool2d', _input_numel, F.adaptive_avg_pool2d,
        torch._C._nn.adaptive_avg_pool2d)
    add('grid_sample', _output_numel(4), F.grid_sample, torch.grid_sampler)
    add('selective_scan', _scan, torch.ops.vssm_mm.selective_scan.default,
        torch.ops.vssm_mm.selective_scan)
    return rules


class FlopCounter(TorchFunctionMode):
    """Counts FLOPs of the torch functions called while active, with fvcore's rules.

    Every counted call adds to ``by_operator`` and to the innermost :meth:`scope`. A function
    counts once: the calls it makes itself are not seen (as in a jit trace).
    """

    def __init__(self):
        super().__init__()
        self._rules = _rules()
        self.by_operator: Counter = Counter()
        self.by_scope: Counter = Counter()
        self._scopes = ['']

    @property
    def total(self) -> int:
        return sum(self.by_operator.values())

    def _enter(self, name: str) -> None:
        self._scopes.append(name)

    def _leave(self) -> None:
        self._scopes.pop()

    @contextlib.contextmanager
    def scope(self, name: str):
        """Count what runs inside under ``name`` in ``by_scope``."""
        self._enter(name)
        try:
            yield
        finally:
            self._leave()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            rule = self._rules.get(func)
        except TypeError:  # unhashable callables count nothing
            rule = None
        if rule is not None:
            name, count = rule
            flops = int(count(args, kwargs, out))
            self.by_operator[name] += flops
            self.by_scope[self._scopes[-1]] += flops
        return out


def model_complexity(model: nn.Module, inputs: Union[torch.Tensor, Sequence],
                     forward: Optional[Callable] = None) -> Dict[str, object]:
    """Parameters and FLOPs (fvcore's rules) of one forward pass, on the meta device.

    The model is moved to the meta device for good (shapes only: no memory for activations,
    no arithmetic); build a fresh one to run it afterwards.

    Args:
        model: The model.
        inputs: A tensor or a tuple of arguments; tensors are replaced by meta tensors of the
            same shape.
        forward: Called as ``forward(model, counter, *inputs)`` instead of ``model(*inputs)``
            (``counter`` is the :class:`FlopCounter`, for :meth:`FlopCounter.scope`).

    Returns:
        ``{'params': int, 'flops': int, 'by_operator': {op: flops}, 'by_module': {name:
        flops}}``; ``by_module`` splits the count over the model's direct children ('' for
        what runs outside them).
    """
    from vssm_mm.ops.selective_scan.flops import scan_as_library_op
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    params = count_params(model)
    model.to('meta')
    inputs = tuple(x.to('meta') if isinstance(x, torch.Tensor) else x for x in inputs)
    counter = FlopCounter()
    handles = []
    for name, child in model.named_children():
        handles.append(child.register_forward_pre_hook(
            lambda m, a, name=name: counter._enter(name)))
        handles.append(child.register_forward_hook(lambda m, a, o: counter._leave()))
    try:
        with scan_as_library_op(), torch.no_grad(), counter:
            if forward is None:
                model(*inputs)
            else:
                forward(model, counter, *inputs)
    finally:
        for handle in handles:
            handle.remove()
    return dict(params=params, flops=counter.total, by_operator=dict(counter.by_operator),
                by_module={k: v for k, v in counter.by_scope.items() if v})


def count_flops(model: nn.Module, inputs: Union[torch.Tensor, Sequence]) -> int:
    """FLOPs of ``model(*inputs)`` (see :func:`model_complexity`; moves the model to meta)."""
    return model_complexity(model, inputs)['flops']


__all__ = ['FlopCounter', 'count_flops', 'count_params', 'model_complexity']
