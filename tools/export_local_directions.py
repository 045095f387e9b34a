"""Turn a LocalMamba search-supernet checkpoint into per-layer scan directions.

    python tools/export_local_directions.py work_dirs/localvim_search_in1k/epoch_100.pth \
        --base configs/localmamba/localvim_tiny_in1k.py \
        --out configs/localmamba/my_localvim_tiny_in1k.py

For every layer (LocalVim) or block (LocalVMamba) of the supernet, the learnable direction
weights (``direction_merge.weights``; ``multi_scan.weights`` in official files) are turned
into probabilities with a softmax; the ``--top`` (default 4) most likely of the eight
candidates are kept and written in canonical order (h, h_flip, v, v_flip, w2, w2_flip, w7,
w7_flip), which is the order of the per-direction parameters, as the official tool does. Reads our training checkpoints (``state_dict``), converted
ones and official trainer files (``model``).

With ``--base`` the output is a config that inherits that config and sets
``model.backbone.directions``; without it, a Python file with ``directions = [...]``
(``--format json`` writes JSON instead).
"""
import argparse
import json
import os
import os.path as osp
import re
import sys

import torch

WEIGHTS_SUFFIXES = ('direction_merge.weights', 'multi_scan.weights')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='supernet checkpoint')
    parser.add_argument('--top', type=int, default=4, help='directions kept per layer')
    parser.add_argument('--out', help='write the directions (or a config, with --base) here')
    parser.add_argument('--base', help='config to inherit in the written config')
    parser.add_argument('--format', choices=['py', 'json'], default='py')
    parser.add_argument('--force', action='store_true', help='overwrite an existing --out')
    parser.add_argument('--trust', action='store_true',
                        help='unpickle the checkpoint without restrictions (trusted files only)')
    return parser.parse_args(argv)


def _state_dict(checkpoint):
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _layer_key(name):
    """Sort 'stages.2.blocks.10.mixer...' numerically (stage-major, then block)."""
    return [int(part) for part in re.findall(r'\.(\d+)\.', '.' + name)]


def direction_weights(state_dict):
    """[(parameter name, (8,) weights), ...] in layer order."""
    found = [(k, v) for k, v in state_dict.items()
             if k.endswith(WEIGHTS_SUFFIXES) and isinstance(v, torch.Tensor)]
    return sorted(found, key=lambda item: _layer_key(item[0]))


def export_directions(state_dict, top=4):
    """Per-layer direction lists and the probabilities they were chosen from."""
    from vssm_mm.ops.scan_orders import LOCALMAMBA_DIRECTIONS
    weights = direction_weights(state_dict)
    if not weights:
        raise ValueError(f'no *{WEIGHTS_SUFFIXES[0]} in the checkpoint: is it a search supernet '
                         "(arch 'search', 'tiny_search' or 'small_search')?")
    candidates = len(LOCALMAMBA_DIRECTIONS)
    if not 1 <= top <= candidates:
        raise ValueError(f'--top must be in 1..{candidates}, got {top}')
    directions, probabilities = [], []
    for name, value in weights:
        if value.numel() != candidates:
            raise ValueError(f'{name} has {value.numel()} weights, expected {candidates}')
        probs = value.detach().float().view(-1).softmax(0)
        chosen = sorted(probs.topk(top).indices.tolist())
        directions.append([LOCALMAMBA_DIRECTIONS[i] for i in chosen])
        probabilities.append(probs.tolist())
    return directions, probabilities


def render(directions, source, base=None, out_dir='.'):
    lines = [f'# Scan directions searched by tools/export_local_directions.py from {source}']
    body = ',\n'.join(f'    {list(layer)!r}' for layer in directions)
    if base is None:
        lines.append(f'directions = [\n{body},\n]')
    else:
        rel = osp.relpath(osp.abspath(base), osp.abspath(out_dir))
        lines.append(f"_base_ = ['{rel}']")
        lines.append(f'directions = [\n{body},\n]')
        lines.append('model = dict(backbone=dict(directions=directions))')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from vssm_mm.checkpoint import safe_load
    if not osp.isfile(args.checkpoint):
        sys.exit(f'error: {args.checkpoint} does not exist')
    checkpoint = safe_load(args.checkpoint, trust=True if args.trust else None)
    try:
        directions, probabilities = export_directions(_state_dict(checkpoint), args.top)
    except ValueError as err:
        sys.exit(f'error: {err}')
    for index, (layer, probs) in enumerate(zip(directions, probabilities)):
        print(f'{index:3d}  {" ".join(f"{p:.3f}" for p in probs)}  -> {layer}')
    if args.format == 'json':
        text = json.dumps(directions, indent=1) + '\n'
    else:
        text = render(directions, osp.basename(args.checkpoint), args.base,
                      osp.dirname(args.out) if args.out else '.')
    if not args.out:
        print(text, end='')
        return
    if osp.exists(args.out) and not args.force:
        sys.exit(f'error: {args.out} exists; pass --force to overwrite it')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text)
    print(f'wrote {len(directions)} layers to {args.out}')


if __name__ == '__main__':
    main()
