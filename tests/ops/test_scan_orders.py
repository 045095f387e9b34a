"""Scan orders: definitions of every family, exact inverse/adjoint, gradients.

The expected orders are written here independently with plain tensor ops (flatten, transpose,
flip, pad, strided slicing), following the official definitions. The default backend ('auto')
runs these on the compiled CPU gather-sum where it is built; the last section checks it against
the torch backend (index_select) directly.
"""
import pytest
import torch
import torch.nn.functional as F

from vssm_mm.ops.scan_orders import (ATROUS_DIRECTIONS, CROSS2D_DIRECTIONS, LOCALMAMBA_DIRECTIONS,
                                     MULTISCALE_LOW_RES, atrous_merge, atrous_scan, cross_merge,
                                     cross_scan, get_scan_order, group_merge, group_scan,
                                     local_merge, local_scan, multiscale_low_res_size,
                                     multiscale_merge, multiscale_scan, triton_available)
from vssm_mm.ops.scan_orders.gather import cpu_available, resolve_backend

SIZES = [(1, 1), (3, 5), (5, 3), (4, 6), (7, 7), (2, 9)]
ORDERS = {
    'cross2d': CROSS2D_DIRECTIONS,
    'atrous': ATROUS_DIRECTIONS,
    'local_all': LOCALMAMBA_DIRECTIONS,
    'local_vmamba_t13': ('h_flip', 'v_flip', 'w2_flip', 'w7_flip'),
    'multiscale_low': ('h_flip+v+v_flip',),
    'subgrid3': ('sub3_12_v_flip', 'sub3_00_h'),
}


def _rand(*shape, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# independent definitions


def _row(x):
    return x.flatten(2)


def _col(x):
    return x.transpose(2, 3).flatten(2)


def _windows(x, k):
    batch, chans, height, width = x.shape
    rows, cols = -(-height // k), -(-width // k)
    x = F.pad(x, (0, cols * k - width, 0, rows * k - height))
    x = x.view(batch, chans, rows, k, cols, k).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(batch, chans, -1)


def _local_reference(x, direction):
    base = direction.replace('_flip', '')
    if base == 'h':
        seq = _row(x)
    elif base == 'v':
        seq = _col(x)
    else:
        seq = _windows(x, int(base[1:]))
    return seq.flip(-1) if direction.endswith('_flip') else seq


def _pad_even(x):
    return F.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))


def _official_localmamba_v_reverse(seq, height, width, flip):
    """LocalMamba's official reverse of 'v': read as (H, W), emit (W, H)."""
    if flip:
        seq = seq.flip(-1)
    batch, chans, _ = seq.shape
    out = seq.view(batch, chans, height, width).transpose(2, 3)
    return out.reshape(batch, chans, height, width)


# ------------------------------------------------------------------------------------------------
# documented sequences


def test_documented_sequences():
    # GroupMamba spec table, 2 x 3 map
    order = get_scan_order(CROSS2D_DIRECTIONS, 2, 3)
    assert order.index.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5],
                                    [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    # LocalMamba spec, 4 x 4 and padded 3 x 5
    order = get_scan_order(('w2', 'w2_flip'), 4, 4)
    assert order.index.tolist() == [[0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15],
                                    [15, 14, 11, 10, 13, 12, 9, 8, 7, 6, 3, 2, 5, 4, 1, 0]]
    order = get_scan_order('w2', 3, 5)
    assert order.index[0].tolist() == [0, 1, 5, 6, 2, 3, 7, 8, 4, -1, 9, -1,
                                       10, 11, -1, -1, 12, 13, -1, -1, 14, -1, -1, -1]
    # EfficientVMamba on 3 x 5 (padded to 4 x 6): sub-grids (0,0) h, (1,0) v, (0,1) h, (1,1) v
    order = get_scan_order(ATROUS_DIRECTIONS, 3, 5)
    assert order.index.tolist() == [[0, 2, 4, 10, 12, 14], [5, -1, 7, -1, 9, -1],
                                    [1, 3, -1, 11, 13, -1], [6, -1, 8, -1, -1, -1]]
    # MSVMamba low-res sequence on 2 x 3: reversed rows, columns, reversed columns
    order = get_scan_order(MULTISCALE_LOW_RES['h'], 2, 3)
    assert order.index[0].tolist() == [5, 4, 3, 2, 1, 0, 0, 3, 1, 4, 2, 5, 5, 2, 4, 1, 3, 0]


# ------------------------------------------------------------------------------------------------
# each family against its definition


@pytest.mark.parametrize('size', SIZES)
def test_cross_scan_definition_and_inverse(size):
    x = _rand(2, 3, *size)
    ys = cross_scan(x)
    expected = torch.stack([_row(x), _col(x), _row(x).flip(-1), _col(x).flip(-1)], dim=1)
    assert torch.equal(ys, expected)
    y = _rand(2, 4, 3, size[0] * size[1], seed=1)
    merged = cross_merge(y, size)
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = (y[:, 1] + y[:, 3].flip(-1)).view(2, 3, size[1], size[0]).transpose(2, 3)
    torch.testing.assert_close(merged, rows.view(2, 3, *size) + cols)
    assert torch.equal(cross_merge(ys, size), 4 * x)
    assert torch.equal(cross_merge(ys.view(2, 12, -1), size), 4 * x)  # (B, K*C, L) accepted


@pytest.mark.parametrize('size', SIZES)
def test_atrous_definition_and_inverse(size):
    x = _rand(2, 3, *size)
    padded = _pad_even(x)
    expected = torch.stack([
        padded[:, :, 0::2, 0::2].flatten(2),
        padded[:, :, 1::2, 0::2].transpose(2, 3).flatten(2),
        padded[:, :, 0::2, 1::2].flatten(2),
        padded[:, :, 1::2, 1::2].transpose(2, 3).flatten(2)], dim=1)
    ys = atrous_scan(x)
    assert torch.equal(ys, expected)
    assert torch.equal(atrous_merge(ys, size), x)  # every pixel in exactly one direction
    with pytest.raises(ValueError, match='step 2'):
        atrous_scan(x, step=3)


@pytest.mark.parametrize('size', SIZES + [(8, 15), (14, 9)])
def test_local_definition_and_inverse(size):
    x = _rand(2, 3, *size)
    directions = LOCALMAMBA_DIRECTIONS
    ys = local_scan(x, directions)
    order = get_scan_order(directions, *size)
    for k, direction in enumerate(directions):
        expected = _local_reference(x, direction)
        assert order.lengths[k] == expected.shape[-1]
        assert torch.equal(ys[:, k, :, :expected.shape[-1]], expected)
        assert not ys[:, k, :, expected.shape[-1]:].any()  # right padding to the common length
        assert torch.equal(local_scan(x, direction), expected)  # one direction, own length
        assert torch.equal(local_merge(expected, size, direction), x)
    split = local_merge(ys, size, directions)
    assert torch.equal(split, x.unsqueeze(1).expand_as(split))
    torch.testing.assert_close(local_merge(ys, size, directions, sum_directions=True), 8 * x)


@pytest.mark.parametrize('size', [(3, 5), (4, 6), (6, 4), (5, 5)])
def test_local_official_vertical_quirk(size):
    height, width = size
    x = _rand(2, 3, height, width)
    for direction in ('v', 'v_flip'):
        seq = local_scan(x, direction)
        official = _official_localmamba_v_reverse(seq, height, width, direction == 'v_flip')
        quirky = local_merge(seq, size, direction, official_vertical_quirk=True)
        assert torch.equal(quirky, official)
        assert torch.equal(local_merge(seq, size, direction), x)  # ours: the true inverse
        assert torch.equal(quirky, x) == (height == width)
        # the quirky merge is still a linear map whose backward is its adjoint
        seq = seq.clone().requires_grad_(True)
        grad = _rand(2, 3, height, width, seed=2)
        (g_ours,) = torch.autograd.grad(
            local_merge(seq, size, direction, official_vertical_quirk=True), seq, grad)
        (g_ref,) = torch.autograd.grad(
            _official_localmamba_v_reverse(seq, height, width, direction == 'v_flip'), seq, grad)
        assert torch.equal(g_ours, g_ref)
    # only the vertical directions change
    directions = ('h', 'v', 'w2_flip', 'w7')
    ys = local_scan(x, directions)
    ours = local_merge(ys, size, directions)
    quirky = local_merge(ys, size, directions, official_vertical_quirk=True)
    for k in (0, 2, 3):
        assert torch.equal(ours[:, k], quirky[:, k])


@pytest.mark.parametrize('size', SIZES)
def test_group_scan_definition_and_gradient(size):
    # GroupMamba: group k scanned with direction k; the official CrossScan_2/4 backward is wrong
    # for H != W, ours must match autograd through the plain definition.
    x = _rand(2, 8, *size).requires_grad_(True)
    ys = group_scan(x)
    groups = x.chunk(4, dim=1)
    expected = torch.stack([_row(groups[0]), _col(groups[1]), _row(groups[2]).flip(-1),
                            _col(groups[3]).flip(-1)], dim=1)
    assert torch.equal(ys, expected)
    grad = _rand(*ys.shape, seed=3)
    (g_ours,) = torch.autograd.grad(ys, x, grad)
    (g_ref,) = torch.autograd.grad(expected, x, grad)
    assert torch.equal(g_ours, g_ref)
    assert torch.equal(group_merge(ys, size), x)
    assert torch.equal(group_merge(ys.reshape(2, 8, -1), size), x)


@pytest.mark.parametrize('full_res_direction', list(MULTISCALE_LOW_RES))
@pytest.mark.parametrize('size', [(7, 7), (5, 9), (8, 6), (1, 2)])
def test_multiscale_definition_and_merge(size, full_res_direction):
    low_size = multiscale_low_res_size(*size)
    conv = torch.nn.Conv2d(3, 3, 7, stride=2, padding=3, groups=3)
    assert conv(torch.zeros(1, 3, *size)).shape[-2:] == low_size
    x_full, x_low = _rand(2, 3, *size), _rand(2, 3, *low_size, seed=1)
    seq_full, seq_low = multiscale_scan(x_full, x_low, full_res_direction)
    assert torch.equal(seq_full, _local_reference(x_full, full_res_direction))
    others = [d for d in ('h', 'h_flip', 'v', 'v_flip') if d != full_res_direction]
    assert torch.equal(seq_low, torch.cat([_local_reference(x_low, d) for d in others], dim=-1))
    map_full, map_low = multiscale_merge(seq_full, seq_low, size, low_size, full_res_direction)
    assert torch.equal(map_full, x_full)
    torch.testing.assert_close(map_low, 3 * x_low, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# generic properties of every order


def _multiplicity(order):
    """How many times each pixel is read, per direction: (K, H*W)."""
    counts = torch.zeros(order.num_directions, order.num_pixels, dtype=torch.float64)
    for k in range(order.num_directions):
        valid = order.index[k][order.index[k] >= 0]
        counts[k].index_add_(0, valid, torch.ones(valid.numel(), dtype=torch.float64))
    return counts


@pytest.mark.parametrize('name', list(ORDERS))
@pytest.mark.parametrize('size', SIZES)
def test_adjoint_and_merge_identity(name, size):
    order = get_scan_order(ORDERS[name], *size)
    num_dirs, seq_len = order.num_directions, order.seq_len
    x = _rand(2, 3, *size)
    y = _rand(2, num_dirs, 3, seq_len, seed=1)
    # shared scan <-> summed merge
    torch.testing.assert_close((order.scan(x) * y).sum(), (x * order.merge(y)).sum())
    # grouped scan <-> per-direction merge
    xg = _rand(2, num_dirs, 3, *size, seed=2)
    torch.testing.assert_close((order.scan(xg) * y).sum(),
                               (xg * order.merge(y, sum_directions=False)).sum())
    # merge(scan(x)) = x times how often each pixel is read
    counts = _multiplicity(order).view(num_dirs, 1, *size)
    torch.testing.assert_close(order.merge(order.scan(x)), counts.sum(0) * x, rtol=0, atol=1e-12)
    torch.testing.assert_close(order.merge(order.scan(xg), sum_directions=False), counts * xg,
                               rtol=0, atol=1e-12)
    # zero tokens are zeros
    assert torch.equal(order.scan(torch.ones(1, 1, *size))[0, :, 0] != 0, order.index >= 0)


@pytest.mark.parametrize('name', ['cross2d', 'local_vmamba_t13', 'multiscale_low'])
def test_gradcheck(name):
    order = get_scan_order(ORDERS[name], 3, 4)
    x = _rand(1, 2, 3, 4).requires_grad_(True)
    y = _rand(1, order.num_directions, 2, order.seq_len, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(order.scan, (x,))
    assert torch.autograd.gradcheck(order.merge, (y,))
    assert torch.autograd.gradgradcheck(order.scan, (x,))
    assert torch.autograd.gradcheck(lambda t: order.merge(t, sum_directions=False), (y,))


# ------------------------------------------------------------------------------------------------
# layouts, dtypes, caching, errors


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_and_strided_input(dtype):
    tokens = _rand(2, 15, 6, dtype=dtype)  # (B, L, C) channel-last tokens of a 3 x 5 map
    x = tokens.transpose(1, 2).view(2, 6, 3, 5)
    ys = cross_scan(x)
    assert ys.dtype == dtype and ys.is_contiguous()
    assert torch.equal(ys, cross_scan(x.contiguous()))
    assert torch.equal(ys[:, 1], _col(x))


def test_single_pixel_map():
    x = _rand(2, 4, 1, 1)
    assert torch.equal(group_scan(x), x.view(2, 4, 1, 1))
    assert torch.equal(group_merge(group_scan(x), (1, 1)), x)


def test_cache_and_errors():
    assert get_scan_order(['h', 'v'], 3, 5) is get_scan_order(('h', 'v'), 3, 5)
    assert get_scan_order('v', 3, 5) is not get_scan_order('v', 3, 5, official_vertical_quirk=True)
    with pytest.raises(ValueError, match="valid segment names"):
        get_scan_order('diagonal', 3, 5)
    order = get_scan_order(CROSS2D_DIRECTIONS, 3, 5)
    with pytest.raises(ValueError, match='get_scan_order'):
        order.scan(torch.zeros(1, 2, 5, 3))
    with pytest.raises(ValueError, match='merge expects'):
        order.merge(torch.zeros(1, 3, 2, 15))
    with pytest.raises(ValueError, match='unknown backend'):
        order.scan(torch.zeros(1, 2, 3, 5), backend='cuda')


@pytest.mark.skipif(not triton_available(), reason='triton not installed')
def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET'):
        cross_scan(torch.zeros(1, 2, 3, 5), backend='triton')


# ------------------------------------------------------------------------------------------------
# the compiled CPU gather-sum (vssm_mm._C_cpu) against the torch backend

needs_cpu_kernel = pytest.mark.skipif(not cpu_available(), reason='vssm_mm._C_cpu is not built')


@needs_cpu_kernel
@pytest.mark.parametrize('name', list(ORDERS))
@pytest.mark.parametrize('size', [(3, 5), (7, 7), (2, 9)])
def test_cpu_kernel_matches_torch(name, size):
    """Scan, grouped scan and both merges, values and gradients, in float64 (merges sum several
    tokens per pixel; with float64 the two orders of summation agree to rounding)."""
    order = get_scan_order(ORDERS[name], *size)
    num_dirs, seq_len = order.num_directions, order.seq_len
    calls = [
        (lambda t, backend: order.scan(t, backend), _rand(2, 5, *size)),
        (lambda t, backend: order.scan(t, backend), _rand(2, num_dirs, 5, *size, seed=1)),
        (lambda t, backend: order.merge(t, backend=backend), _rand(2, num_dirs, 5, seq_len, seed=2)),
        (lambda t, backend: order.merge(t, sum_directions=False, backend=backend),
         _rand(2, num_dirs, 5, seq_len, seed=3)),
    ]
    for fn, inp in calls:
        results = {}
        for backend in ('cpu', 'torch'):
            x = inp.clone().requires_grad_(True)
            out = fn(x, backend)
            grad_out = _rand(*out.shape, seed=7)
            results[backend] = (out, torch.autograd.grad(out, x, grad_out)[0])
        torch.testing.assert_close(results['cpu'], results['torch'], rtol=1e-12, atol=1e-12)


@needs_cpu_kernel
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_kernel_dtypes_and_channel_last_input(dtype):
    """Half dtypes sum in float32 and round once, like the torch backend (scans copy exactly);
    a channel-last map is read in place; the padded tokens of odd-sized atrous maps are zeros."""
    tokens = _rand(2, 63, 6, dtype=dtype)  # (B, L, C) channel-last tokens of a 7 x 9 map
    x = tokens.transpose(1, 2).view(2, 6, 7, 9)
    for directions in (CROSS2D_DIRECTIONS, ATROUS_DIRECTIONS, LOCALMAMBA_DIRECTIONS):
        order = get_scan_order(directions, 7, 9)
        ys = order.scan(x, backend='cpu')
        assert ys.dtype == dtype and ys.is_contiguous()
        assert torch.equal(ys, order.scan(x.contiguous(), backend='torch'))
        merged = order.merge(ys, backend='cpu')
        assert merged.dtype == dtype
        # the float32 sums over directions may differ in order (torch reduces in its own order)
        torch.testing.assert_close(merged, order.merge(ys, backend='torch'))


@needs_cpu_kernel
def test_auto_picks_the_cpu_kernel_for_cpu_tensors():
    x = torch.zeros(1, 2, 3, 5)
    assert resolve_backend('auto', x) == 'cpu'
    assert resolve_backend('torch', x) == 'torch'
    with pytest.raises(RuntimeError, match="backend='cpu' runs on CPU tensors"):
        resolve_backend('cpu', torch.zeros(1, device='meta'))
