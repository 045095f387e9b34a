"""Run a model on one image and save a picture of the result.

    python tools/image_demo.py CONFIG CHECKPOINT IMAGE [--out result.jpg] [--device cpu]

Classification draws the top-5 classes, detection the boxes and masks, segmentation a coloured
overlay, through mmpretrain's, mmdet's or mmseg's inferencer (chosen by the config's
default_scope). The checkpoint is loaded with the restricted unpickler.
"""
import argparse
import os.path as osp
import sys
import warnings

warnings.filterwarnings('ignore')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('image')
    parser.add_argument('--out', help='output picture (default: <image name>_result.jpg here)')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda if present)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='detection score threshold')
    parser.add_argument('--force', action='store_true', help='overwrite --out if it exists')
    return parser.parse_args(argv)


def _draw_topk(image_path, predictions, classes, out):
    """Top-5 classes as a bar chart beside the image."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from PIL import Image
    scores = predictions['pred_scores']
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:5]
    names = [classes[i] if classes else str(i) for i in order]
    fig, (ax_img, ax_bar) = plt.subplots(1, 2, figsize=(9, 3.5),
                                         gridspec_kw=dict(width_ratios=[1, 1.2]))
    ax_img.imshow(Image.open(image_path).convert('RGB'))
    ax_img.axis('off')
    ax_bar.barh(range(len(order))[::-1], [scores[i] for i in order], color='tab:blue')
    ax_bar.set_yticks(range(len(order))[::-1], names)
    ax_bar.set_xlim(0, 1)
    ax_bar.set_xlabel('probability')
    ax_bar.set_title('top-5')
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    for path in (args.config, args.checkpoint, args.image):
        if not osp.isfile(path):
            sys.exit(f'not found: {path}')
    out = args.out or osp.splitext(osp.basename(args.image))[0] + '_result.jpg'
    if osp.exists(out) and not args.force:
        sys.exit(f'{out} exists; pass --force or choose another --out')
    import torch
    from mmengine.config import Config

    import vssm_mm  # noqa: F401  (safe checkpoint loading, registry)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    cfg = Config.fromfile(args.config)
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    scope = cfg.get('default_scope')
    if scope == 'mmpretrain':
        from mmpretrain import ImageClassificationInferencer
        inferencer = ImageClassificationInferencer(cfg, pretrained=args.checkpoint, device=device)
        result = inferencer(args.image)[0]
        classes = inferencer.classes
        _draw_topk(args.image, result, classes, out)
        best = result['pred_label']
        print(f"top-1: {classes[best] if classes else best} ({result['pred_score']:.3f})")
    elif scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(cfg, weights=args.checkpoint, device=device, show_progress=False)
        result = inferencer(args.image, return_vis=True, pred_score_thr=args.score_thr,
                            no_save_vis=True)
        _save(result['visualization'][0], out)
        scores = result['predictions'][0]['scores']
        print(f'{sum(s >= args.score_thr for s in scores)} objects above {args.score_thr}')
    elif scope == 'mmseg':
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(cfg, weights=args.checkpoint, device=device)
        result = inferencer(args.image, return_vis=True, show=False)
        _save(result['visualization'], out)
    else:
        sys.exit(f'unsupported default_scope {scope!r}: expected mmpretrain, mmdet or mmseg')
    print(f'wrote {out}')


def _save(rgb, out):
    from PIL import Image
    Image.fromarray(rgb).save(out)


if __name__ == '__main__':
    main()
