"""FLOP counting for ``selective_scan``: fvcore / mmengine jit handles, a
formula for the ``torch.library`` op, and routing the scan through that op
while counting on meta tensors (``vssm_mm.analysis``)."""
import contextlib

import torch

# How torch.jit.trace records the op: the autograd Function used in eager
# mode, and the torch.library op used under torch.compile.
SCAN_OP_NAME = 'prim::PythonOp.SelectiveScanFn'
LIBRARY_OP_NAME = 'vssm_mm::selective_scan'


def selective_scan_flops(batch, length, channels, d_state, with_D=True,
                         with_z=False):
    """FLOPs of one selective scan as the Mamba/VMamba papers count them.

    9 per (b, d, t, n) (discretisation, recurrence and output contraction,
    the count given in state-spaces/mamba issue #110), plus one per (b, d, t)
    for the D skip and one more for the z gate.
    """
    flops = 9 * batch * length * channels * d_state
    if with_D:
        flops += batch * channels * length
    if with_z:
        flops += batch * channels * length
    return flops


def _shape(value):
    """Static shape of a traced ``torch._C.Value`` (or a tensor); () for
    non-tensor values such as a traced None."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    value_type = value.type()
    if not isinstance(value_type, torch._C.TensorType):
        return ()
    return tuple(value_type.sizes() or ())


def selective_scan_flop_jit(inputs, outputs):
    """FLOP handle for fvcore / mmengine ``FlopAnalyzer`` (jit traces).

    The traced op receives its arguments in the order u, delta, A, B, C, then
    D, z, delta_bias (the autograd Function's trace drops None arguments,
    the library op's keeps them as None constants), so u and A have fixed
    positions and z is the only optional argument with three dimensions.

    Args:
        inputs (list[torch._C.Value]): the op's traced inputs.
        outputs (list[torch._C.Value]): unused.

    Returns:
        int: the FLOP count of :func:`selective_scan_flops` (with the D term
        always counted, as VMamba does).
    """
    batch, channels, length = _shape(inputs[0])
    d_state = _shape(inputs[2])[1]
    with_z = any(len(_shape(value)) == 3 for value in inputs[5:])
    return selective_scan_flops(batch, length, channels, d_state,
                                with_D=True, with_z=with_z)


# Register these with mmengine's FlopAnalyzer(...).set_op_handle(**...) or
# fvcore's FlopCountAnalysis(...).set_op_handle(...).
SCAN_FLOP_HANDLES = {
    SCAN_OP_NAME: selective_scan_flop_jit,
    LIBRARY_OP_NAME: selective_scan_flop_jit,
}


def selective_scan_op_flops(u, delta, A, B, C, D=None, z=None, *args, **kwargs):
    """:func:`selective_scan_flops` from the arguments of one call (real, fake
    or meta tensors; only shapes are read), with the D term always counted as
    the jit handle does."""
    batch, channels, length = u.shape
    return selective_scan_flops(batch, length, channels, A.shape[1],
                                with_D=True, with_z=z is not None)


def _flop_counter_formula(u_shape, delta_shape, A_shape, B_shape, C_shape,
                          D_shape=None, z_shape=None, *args, out_shape=None,
                          **kwargs):
    batch, channels, length = u_shape
    return selective_scan_flops(batch, length, channels, A_shape[1],
                                with_D=True, with_z=z_shape is not None)


def _register_flop_counter_formula():
    """``torch.utils.flop_counter.FlopCounterMode`` counts the library op with
    the papers' estimate (it would count nothing for it otherwise)."""
    from torch.utils import flop_counter

    from . import library  # noqa: F401  (registers the op)
    op = torch.ops.vssm_mm.selective_scan
    if op.default not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(op, get_raw=False)(
            _flop_counter_formula)


@contextlib.contextmanager
def scan_as_library_op():
    """Route every ``selective_scan`` call through the ``torch.library`` op.

    In eager mode ``selective_scan`` runs ``SelectiveScanFn``, whose backends
    compute on real tensors: a FLOP counter running on meta or fake tensors
    would see (and miscount) the backend's internal ops, or fail. While this
    context is active the same arguments go to ``vssm_mm::selective_scan``
    instead: one opaque op whose fake kernel gives the output shapes without
    computing anything, so a ``TorchFunctionMode`` or ``FlopCounterMode`` sees
    the scan as one call. Only for counting: the op's backward differs in
    nothing, but nothing here is meant for training.
    """
    from .interface import SelectiveScanFn
    from .library import selective_scan_op

    def apply(*args):
        out, last_state, _ = selective_scan_op(*args)
        return out, last_state

    previous = SelectiveScanFn.__dict__.get('apply')
    SelectiveScanFn.apply = staticmethod(apply)
    try:
        yield
    finally:
        if previous is None:
            del SelectiveScanFn.apply
        else:
            SelectiveScanFn.apply = previous


_register_flop_counter_formula()
