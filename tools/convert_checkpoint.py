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
import tempfile

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


def save_atomically(checkpoint, dst: str) -> None:
    """Write ``dst`` through a fresh temporary file beside it; nothing is left on failure."""
    folder = osp.dirname(osp.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(dst)}.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None):
    args = parse_args(argv)
    from vssm_mm.checkpoint import CorruptCheckpointError, UnsafeCheckpointError
    from vssm_mm.checkpoint.convert import ConversionError, convert_checkpoint
    if not osp.isfile(args.src):
        sys.exit(f'error: {args.src} does not exist' if not osp.exists(args.src) else
                 f'error: {args.src} is a folder; name the official checkpoint file')
    if osp.isdir(args.dst):
        sys.exit(f'error: {args.dst} is a folder; name the output file, e.g. '
                 f'{osp.join(args.dst, osp.splitext(osp.basename(args.src))[0] + "_vssm_mm.pth")}')
    if osp.exists(args.dst) and not args.force:
        sys.exit(f'error: {args.dst} exists; pass --force to overwrite it or choose another name')
    if osp.abspath(args.src) == osp.abspath(args.dst):
        sys.exit('error: SRC and DST are the same file')
    try:
        checkpoint = convert_checkpoint(args.src, args.arch, args.weights,
                                        trust=True if args.trust else None)
    except (ConversionError, CorruptCheckpointError, UnsafeCheckpointError) as err:
        sys.exit(f'error: {err}')
    save_atomically(checkpoint, args.dst)
    meta = checkpoint['meta']
    print(f"converted {args.src} ({meta['weights']} weights, {meta['task']}, "
          f"{len(checkpoint['state_dict'])} tensors) -> {args.dst}")


if __name__ == '__main__':
    main()
