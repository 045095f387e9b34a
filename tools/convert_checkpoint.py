"""Convert an official checkpoint into a vssm_mm checkpoint.

    python tools/convert_checkpoint.py --arch msvmamba-t vssm_tiny_ms_e300.pth msvmamba_tiny.pth

Classification checkpoints (trainer files with model / model_ema and a pickled config, or bare
state dicts) become ``backbone.* + head.fc.*`` for our ``*_in1k.py`` configs; the same file
initialises detection/segmentation backbones through
``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``. Official mmdet/mmseg
checkpoints keep their neck and head keys. The file is read without running pickled code;
``--trust`` lifts that restriction for files you trust.
"""
import argparse
import os
import os.path as osp
import sys

import torch


def parse_args(argv=None):
    from vssm_mm.checkpoint.convert import ARCHS
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official checkpoint')
    parser.add_argument('dst', help='output file (.pth)')
    parser.add_argument('--arch', required=True, choices=sorted(ARCHS), help='official model')
    parser.add_argument('--weights', choices=['auto', 'ema', 'raw'], default='auto',
                        help='EMA or raw weights of a trainer checkpoint (auto: EMA if present)')
    parser.add_argument('--force', action='store_true', help='overwrite an existing DST')
    parser.add_argument('--trust', action='store_true',
                        help='unpickle SRC without restrictions (only for files you trust)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from vssm_mm.checkpoint.convert import ConversionError, convert_checkpoint
    if not osp.isfile(args.src):
        sys.exit(f'error: {args.src} does not exist')
    if osp.exists(args.dst) and not args.force:
        sys.exit(f'error: {args.dst} exists; pass --force to overwrite it or choose another name')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        sys.exit('error: SRC and DST are the same file')
    try:
        checkpoint = convert_checkpoint(args.src, args.arch, args.weights,
                                        trust=True if args.trust else None)
    except ConversionError as err:
        sys.exit(f'error: {err}')
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    tmp = args.dst + '.tmp'
    torch.save(checkpoint, tmp)
    os.replace(tmp, args.dst)
    meta = checkpoint['meta']
    print(f"converted {args.src} ({meta['weights']} weights, {meta['task']}, "
          f"{len(checkpoint['state_dict'])} tensors) -> {args.dst}")


if __name__ == '__main__':
    main()
