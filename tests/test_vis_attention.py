"""tools/analysis_tools/vis_attention.py: the weights it draws are the
attention the block computes, and its command line works end to end.

The weights are recomputed from a block's input (captured by the tool's
forward hook); with them, the weighted sums of the values, combined and
projected as Eq. 12 combines them, must give the block's own output, in
float64 to 1e-10. Cases: Table 1's 'small' and two released presets, both
query forms, two grid levels, and an input whose maps the grids do not
divide (padded grids: the weights of the real keys must sum to 1).
"""
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmtranscnn.models import TransCNN
from random_bn import randomise_bn
from tool_modules import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO, 'tools', 'analysis_tools', 'vis_attention.py')
SHAPES_CONFIG = osp.join(REPO, 'configs', 'tiny',
                         'retinanet_transcnn_small_shapes.py')


vis = load_tool('tools/analysis_tools/vis_attention.py', 'vis_attention')

# 76x92 pixels: stage maps 19x23, 10x12, 5x6 and 3x3, which grids of 8, 4
# and 2 do not divide.
INPUT_HW = (76, 92)
BACKBONES = {
    'small': dict(arch='small', grid_sizes=(4, 2, 2, 0)),
    'small-two-levels': dict(arch='small', grid_sizes=((4, 2), (2, 2), 2,
                                                       0)),
    'transcnn-v1-tiny': dict(arch='transcnn-v1-tiny'),
    'hatnet-tiny': dict(arch='hatnet-tiny'),
    'hatnet-tiny-two-levels': dict(
        arch='hatnet-tiny', grid_sizes=((4, 2), (4, 2), 2, 0),
        pool_ratios=((4, 2), (2, 2), 2, 0)),
}


def _queries(h, w):
    """Corners (the bottom-right one in a padded grid) and the middle."""
    return [(0, 0), (h - 1, w - 1), (h // 2, w // 3), (h - 1, 0)]


@pytest.mark.parametrize('query_from', ['full', 'merged'])
@pytest.mark.parametrize('name', list(BACKBONES))
def test_weights_reproduce_the_block_output(name, query_from):
    torch.manual_seed(0)
    backbone = TransCNN(**BACKBONES[name], query_from=query_from)
    randomise_bn(backbone)
    backbone = backbone.double().eval()
    image = torch.randn(1, 3, *INPUT_HW, dtype=torch.float64)
    checked = 0
    for stage in range(4):
        attn = vis.find_block(backbone, stage, 0)
        x, out = vis.capture_block_input(backbone, attn, image)
        assert not attn._forward_hooks  # the hook is gone: model unchanged
        h, w = x.shape[2:]
        with torch.no_grad():
            for y, x_pos in _queries(h, w):
                levels = vis.attention_levels(attn, x, y, x_pos)
                assert len(levels) == len(attn.grid_sizes) + 1
                for level in levels:
                    # Every level's weights over the real keys sum to 1:
                    # padded keys got nothing.
                    sums = level.weights.sum((1, 2))
                    torch.testing.assert_close(sums, torch.ones_like(sums),
                                               rtol=0, atol=1e-12)
                    top, left, bottom, right = level.cell
                    outside = level.weights.clone()
                    outside[:, top:bottom, left:right] = 0
                    assert not outside.any()
                rebuilt = vis.block_output(attn, x, levels, y, x_pos)
                expected = out[0, :, y, x_pos]
                torch.testing.assert_close(rebuilt, expected, rtol=1e-10,
                                           atol=1e-10 * expected.abs().max())
                if len(levels) > 1:
                    # Every level counts: without the last one the output
                    # is not reproduced.
                    partial = vis.block_output(attn, x, levels[:-1], y,
                                               x_pos)
                    assert not torch.allclose(partial, expected, rtol=1e-6)
                checked += 1
    assert checked == 16


def test_contributions_spread_each_level_over_its_regions():
    torch.manual_seed(0)
    backbone = TransCNN(**BACKBONES['small-two-levels']).double().eval()
    attn = vis.find_block(backbone, 0, 0)
    x, _ = vis.capture_block_input(
        backbone, attn, torch.randn(1, 3, *INPUT_HW, dtype=torch.float64))
    h, w = x.shape[2:]
    with torch.no_grad():
        levels = vis.attention_levels(attn, x, h - 1, w - 1)
    total = vis.contributions(levels, h, w)
    assert total.shape == (attn.num_heads, h, w)
    # Each level gives 1 in all, however its regions overhang the map.
    sums = total.sum((1, 2))
    torch.testing.assert_close(sums, torch.full_like(sums, len(levels)))
    # The last level (one token per 8x8 region here) reaches every
    # position.
    assert (total > 0).all()


# -- the command line ---------------------------------------------------
TINY_CONFIG = """
_base_ = {base!r}
model = dict(
    backbone=dict(
        _delete_=True,
        type='TransCNN',
        arch=dict(channels=[16, 32, 32, 32], depths=[1, 2, 1, 1],
                  kernel_sizes=[3, 3, 3, 3], expand_ratios=[2, 2, 2, 2]),
        head_dim=16,
        grid_sizes=((4, 2), 4, 2, 0),
        init_cfg=None),
    neck=dict(in_channels=[16, 32, 32, 32], out_channels=16),
    bbox_head=dict(in_channels=16, feat_channels=16, stacked_convs=1))
"""


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """A tiny RetinaNet config, a randomly initialised checkpoint of it and
    a 100x130 image (resized by the test pipeline to 123x160, padded to
    128x160)."""
    import mmcv
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from mmtranscnn.engine import setup_codebase
    root = tmp_path_factory.mktemp('vis_attention')
    config = root / 'tiny_retinanet.py'
    config.write_text(TINY_CONFIG.format(base=SHAPES_CONFIG))
    cfg = Config.fromfile(str(config))
    setup_codebase(cfg)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = root / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(epoch=0)),
               str(checkpoint))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 130, 3), dtype=np.uint8)
    image[30:70, 40:90] = (0, 110, 255)
    image_path = root / 'image.png'
    mmcv.imwrite(image, str(image_path))
    return dict(config=str(config), checkpoint=str(checkpoint),
                image=str(image_path), root=root)


def test_command_line_writes_the_png(tiny_run):
    out = tiny_run['root'] / 'attention.png'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                  if p])
    proc = subprocess.run(
        [sys.executable, TOOL, tiny_run['config'], tiny_run['checkpoint'],
         tiny_run['image'], '--point', '150', '120', '--stage', '0',
         '--block', '0', '--out', str(out)],
        cwd=str(tiny_run['root']), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert 'levels: 3 (and their sum) drawn' in proc.stdout
    import mmcv
    picture = mmcv.imread(str(out))
    # Four panels (three levels and the sum) side by side.
    assert picture.shape[1] > 2.5 * picture.shape[0] > 500
    assert picture.std() > 10


def test_one_head_and_merged_queries(tiny_run):
    out = tiny_run['root'] / 'head.png'
    result = vis.visualise(vis.parse_args([
        tiny_run['config'], tiny_run['checkpoint'], tiny_run['image'],
        '--point', '10', '5', '--stage', '1', '--block', '1', '--head', '1',
        '--log', '--out', str(out), '--cfg-options',
        'model.backbone.query_from=merged'
    ]))
    assert osp.getsize(out) > 10000
    assert result['stride'] == 8 and result['token'] == (0, 1)
    assert [level.region for level in result['levels']] == [1, 4]


@pytest.mark.parametrize('args, message', [
    (['--point', '160', '0'], '--point 160 0 is outside the image'),
    (['--point', '0', '123'], 'Y in 0..122'),
    (['--point', '-1', '0'], 'X must be in 0..159'),
    (['--stage', '4'], '--stage 4 does not exist: allowed stages are 0..3'),
    (['--stage', '1', '--block', '2'],
     '--block 2 does not exist in stage 1: allowed blocks are 0..1'),
    (['--head', '2'], '--head 2 is out of range'),
])
def test_bad_values_name_the_argument(tiny_run, capsys, args, message):
    argv = [tiny_run['config'], tiny_run['checkpoint'], tiny_run['image'],
            '--point', '0', '0', '--out',
            str(tiny_run['root'] / 'bad.png')] + args
    with pytest.raises(SystemExit) as exit_info:
        vis.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tiny_run['root'] / 'bad.png').exists()
