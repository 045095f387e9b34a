"""FLOP counting for ``selective_scan`` in fvcore / mmengine jit analysis."""
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
