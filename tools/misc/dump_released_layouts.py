"""Write the key names, shapes and parameter counts of the released models.

Produces ``tests/data/released_layouts.json``, the fixture against which the
tests check that the eight released presets load the authors' files
strictly. The authors' model definitions are not part of this repository:
point ``--code-dir`` at a checkout of ``github.com/yun-liu/HAT-Net`` (it
holds ``TransCNN.py`` and ``HAT_Net.py``; they import ``timm``, which must
be installed). Each model is built with its defaults (1000 classes) and
random weights; nothing is downloaded.

    python tools/misc/dump_released_layouts.py --code-dir ../HAT-Net \
        --out tests/data/released_layouts.json
"""
import argparse
import json
import os.path as osp

from released_code import BUILDERS, load_module  # noqa: E402  (tools/misc)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--code-dir', required=True,
                        help='folder holding TransCNN.py and HAT_Net.py')
    parser.add_argument('--out', required=True, help='JSON file to write')
    args = parser.parse_args()
    modules = {}
    result = {}
    for preset, (filename, builder) in BUILDERS.items():
        if filename not in modules:
            modules[filename] = load_module(osp.join(args.code_dir, filename))
        model = getattr(modules[filename], builder)()
        params = dict(model.named_parameters())
        result[preset] = dict(
            builder=f'{filename}:{builder}',
            params=sum(p.numel() for p in params.values()),
            # HAT_Net.py builds attn.proj_norm in every block and never
            # calls it.
            unused_params=sum(p.numel() for n, p in params.items()
                              if n.endswith(('proj_norm.weight',
                                             'proj_norm.bias'))),
            state_dict={k: list(v.shape)
                        for k, v in model.state_dict().items()})
        print(preset, result[preset]['params'])
    with open(args.out, 'w') as f:
        # One model per line: small diffs when a model changes.
        f.write('{\n' + ',\n'.join(
            f'{json.dumps(k)}: {json.dumps(v, separators=(",", ":"))}'
            for k, v in result.items()) + '\n}\n')


if __name__ == '__main__':
    main()
