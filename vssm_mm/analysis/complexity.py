"""Parameters and FLOPs counted the way the four papers count them.

mmengine's ``FlopAnalyzer`` (fvcore's rules: one multiply-add = one FLOP for conv/linear/
matmul/einsum, 5 per element for LayerNorm, ...) with the selective scan counted as
``9 * B * L * D * N + B * D * L`` (+ ``B * D * L`` with a z gate), the estimate every paper of
the family uses. Element-wise activations and token re-orderings count zero, as in the official
analysis scripts.
"""
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

# Ops the official scripts explicitly count as zero; listing them also silences warnings.
_IGNORED_OPS = ('aten::silu', 'aten::neg', 'aten::exp', 'aten::flip', 'aten::sigmoid',
                'aten::gelu', 'aten::softplus', 'aten::mul', 'aten::add', 'aten::sub',
                'aten::div', 'aten::rsub', 'aten::add_', 'aten::mul_', 'aten::sum', 'aten::mean',
                'aten::index_select', 'aten::index', 'aten::gather', 'aten::scatter_add',
                'aten::softmax', 'aten::relu', 'aten::relu_', 'aten::hardsigmoid', 'aten::pad',
                'aten::constant_pad_nd', 'aten::repeat_interleave', 'aten::cumsum',
                'aten::bernoulli_', 'aten::dropout', 'aten::max', 'aten::pow', 'aten::sqrt',
                'aten::rsqrt', 'aten::abs', 'aten::cos', 'aten::sin', 'aten::var',
                'aten::new_zeros', 'aten::fill_', 'aten::clamp', 'aten::log', 'aten::expand_as',
                'aten::topk', 'aten::sort', 'aten::argmax', 'aten::where', 'aten::masked_fill',
                'aten::div_', 'aten::hardswish', 'aten::hardswish_', 'aten::silu_',
                'aten::gelu_', 'aten::sigmoid_', 'aten::batch_norm_stats', 'aten::clone',
                'aten::ones_like', 'aten::zeros_like', 'aten::rand', 'aten::floor_divide',
                'aten::lt', 'aten::gt', 'aten::ge', 'aten::le', 'aten::eq', 'aten::ne',
                'aten::any', 'aten::all', 'aten::round', 'aten::stack', 'aten::scatter_',
                'aten::reciprocal', 'aten::exp_', 'aten::log_softmax', 'aten::max_pool2d',
                'aten::mse_loss', 'aten::linspace', 'aten::meshgrid', 'aten::arange',
                'aten::logical_and', 'aten::logical_or', 'aten::ceil', 'aten::floor',
                'aten::im2col', 'aten::unfold', 'aten::roll', 'aten::tanh')


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _scan_handles() -> Dict[str, object]:
    from vssm_mm.ops.selective_scan import SCAN_FLOP_HANDLES
    handles = dict(SCAN_FLOP_HANDLES)
    # Scan orders are index gathers: no arithmetic.
    handles['prim::PythonOp._GatherSum'] = None
    for op in _IGNORED_OPS:
        handles[op] = None
    return handles


@torch.no_grad()
def count_flops(model: nn.Module, inputs: Union[torch.Tensor, Sequence],
                by_module: bool = False):
    """FLOPs of ``model(*inputs)`` (traced with torch.jit on the inputs' device).

    Args:
        model: The model; ``forward`` must accept ``inputs``.
        inputs: A tensor or a tuple of arguments.
        by_module: Also return the per-module totals.

    Returns:
        int total FLOPs, or ``(total, {module_name: flops})``.
    """
    from mmengine.analysis import FlopAnalyzer
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    analyzer = FlopAnalyzer(model, tuple(inputs))
    analyzer.set_op_handle(**_scan_handles())
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    total = analyzer.total()
    if by_module:
        return total, dict(analyzer.by_module())
    return total


def model_complexity(model: nn.Module, inputs, unsupported: Optional[list] = None) -> dict:
    """``{'params': int, 'flops': int, 'unsupported_ops': {op: count}}``."""
    from mmengine.analysis import FlopAnalyzer
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs, )
    analyzer = FlopAnalyzer(model, tuple(inputs))
    analyzer.set_op_handle(**_scan_handles())
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    return dict(params=count_params(model), flops=analyzer.total(),
                unsupported_ops=dict(analyzer.unsupported_ops()))
