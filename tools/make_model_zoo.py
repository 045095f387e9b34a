"""Write docs/model_zoo.md from the metafiles and a get_flops.py JSON.

    python tools/get_flops.py --all --json work_dirs/flops.json
    python tools/make_model_zoo.py --flops work_dirs/flops.json

Every config listed in configs/*/metafile.yml gets a row: the paper's metrics, the paper's
params/FLOPs and ours (measured by get_flops.py), plus the converter's --arch names per family.
"""
import argparse
import glob
import json
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASK_NAMES = {'Image Classification': 'ImageNet-1k', 'Object Detection': 'COCO',
              'Semantic Segmentation': 'ADE20K'}


def _metrics(results):
    parts = []
    for result in results or []:
        for name, value in result.get('Metrics', {}).items():
            parts.append(f'{name} {value}')
    return ', '.join(parts) or '-'


def _fmt(value, scale, unit):
    return f'{value / scale:.2f}{unit}' if isinstance(value, (int, float)) else '-'


def main(argv=None):
    import yaml
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--flops', nargs='+', default=[],
                        help='JSON file(s) written by tools/get_flops.py --all --json')
    parser.add_argument('--out', default=osp.join(ROOT, 'docs', 'model_zoo.md'))
    args = parser.parse_args(argv)
    measured = {}
    for path in args.flops:
        with open(path) as f:
            measured.update({row['config']: row for row in json.load(f)})
    from vssm_mm.checkpoint.convert import ARCHS
    lines = ['# Model zoo', '',
             'Every config with the results its paper reports. *Params/FLOPs (ours)* are '
             'measured by `tools/get_flops.py` (224x224 for classification, 1280x800 for '
             'detection, 512x2048 for segmentation; the selective scan counted as the papers '
             'count it); where they read "-", fill them with `python tools/get_flops.py --all '
             '--json flops.json && python tools/make_model_zoo.py --flops flops.json` (the '
             'family pages list measured values). Official checkpoints convert with '
             '`python tools/convert_checkpoint.py --arch ARCH SRC DST`; see each family page '
             'for the reproduce commands. Counting a detection or segmentation model traces it at '
             'full resolution on the CPU; the larger ones need more than 24 GB of memory.', '']
    for path in sorted(glob.glob(osp.join(ROOT, 'configs', '*', 'metafile.yml'))):
        with open(path) as f:
            meta = yaml.safe_load(f)
        collection = meta['Collections'][0]
        backbones = sorted({spec.backbone for spec in ARCHS.values()
                            if spec.backbone.lower().startswith(collection['Name'].lower()[:5])})
        arches = sorted(name for name, spec in ARCHS.items() if spec.backbone in backbones
                        and not name.startswith('test-'))
        lines += [f"## {collection['Name']}", '',
                  f"[{collection['Paper']['Title']}]({collection['Paper']['URL']}) - "
                  f"details: [{osp.basename(collection['README'])}]"
                  f"({osp.relpath(osp.join(ROOT, collection['README']), osp.join(ROOT, 'docs'))})",
                  '', f"Converter `--arch`: {', '.join(f'`{a}`' for a in arches) or '-'}", '',
                  '| config | paper results | params (paper) | params (ours) | FLOPs (paper) '
                  '| FLOPs (ours) |', '| --- | --- | ---: | ---: | ---: | ---: |']
        for model in meta['Models']:
            config = model['Config']
            reported = model.get('Reported') or {}
            row = measured.get(config, {})
            flops = _fmt(row.get('flops'), 1e9, 'G')
            if row.get('paper_formula_flops'):
                # LocalVim's paper counts with an analytic formula, not a trace.
                flops = (f"{_fmt(row['paper_formula_flops'], 1e9, 'G')} by the paper's "
                         f'formula, {flops} traced')
            lines.append(
                f"| [{osp.basename(config)}](../{config}) | {_metrics(model.get('Results'))} | "
                f"{reported.get('Parameters', '-')} | {_fmt(row.get('params'), 1e6, 'M')} | "
                f"{reported.get('FLOPs', '-')} | {flops} |")
        lines.append('')
    with open(args.out, 'w') as f:
        f.write('\n'.join(lines))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
