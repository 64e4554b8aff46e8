"""The authors' released ImageNet checkpoints and how their keys map to ours.

The eight published files (:data:`RELEASED`, each a preset of
:class:`~mmtranscnn.models.TransCNN` of the same name, laid out in
:mod:`.presets`) come with the code that defines them (GitHub
``yun-liu/HAT-Net``): ``TransCNN.py``, the first version ("TransCNN",
256x256), and ``HAT_Net.py``, the journal version ("HAT-Net", 224x224).
This module is the single place that knows the files' key names: the
converter ``tools/model_converters/hatnet2mmtranscnn.py`` and the
backbone's ``init_cfg=dict(type='Pretrained', checkpoint=...)`` both call
:func:`convert_released`. How the released networks differ from the
paper: ``docs/released_weights.md``.

Key layout of the released files (``S`` stage 0-3, ``I`` block in stage,
``K`` 2-4):

=============================  =====================================  ==========
released                       ours                                   version
=============================  =====================================  ==========
patch_embed.0 (conv)           stem.conv1.conv                        both
patch_embed.1 (norm)           stem.conv1.bn / stem.conv1.gn          v1 / HAT
patch_embed.3 (conv)           stem.conv2.conv                        both
blocks.S.I.attn.<name>         stages.S.J.attn.<name>, J = I + (S>0)  both
blocks.S.I.conv.conv1.0        stages.S.J.irb.expand.conv / .gn       v1 / HAT
blocks.S.I.conv.conv1.1        stages.S.J.irb.expand.bn / .conv       v1 / HAT
blocks.S.I.conv.conv2.0        stages.S.J.irb.depthwise.conv          both
blocks.S.I.conv.conv2.1        stages.S.J.irb.depthwise.bn            v1
blocks.S.I.conv.conv3.0        stages.S.J.irb.project.conv            both
blocks.S.I.conv.conv3.1        stages.S.J.irb.project.bn / .gn        v1 / HAT
dsK.conv                       stages.(K-1).0.conv_branch.conv        both
dsK.norm1 / dsK.norm           stages.(K-1).0.conv_branch.bn / .gn    v1 / HAT
dsK.residual                   stages.(K-1).0.pool_branch.conv        v1
dsK.norm2                      stages.(K-1).0.pool_branch.bn          v1
classifier.1                   head.fc (mmpretrain LinearClsHead)     both
=============================  =====================================  ==========

``HAT_Net.py`` builds a norm in every attention block that its forward never
calls (``blocks.S.I.attn.proj_norm``); the converter drops those weights
(:data:`UNUSED_RELEASED_KEYS`), as the network here does not build the layer.

The attention's ``qkv``, ``q``, ``kv`` and ``proj`` are 1x1 convs in the
released code and ``nn.Linear`` here: their weights lose the two trailing
unit dimensions; the channel order (q|k|v, then heads, then head channels)
is the same.
"""
import re
from typing import Dict, List, Optional, Tuple

from torch import Tensor

from .presets import ARCH_SETTINGS, RELEASED, ReleasedModel

VERSIONS = ('transcnn-v1', 'hatnet')

# Norm layer names inside our ConvModules (mmcv names them by type).
_NORM = {'transcnn-v1': 'bn', 'hatnet': 'gn'}

#: Keys of layers the released code builds but never calls, by version:
#: dropped on conversion.
UNUSED_RELEASED_KEYS = {
    'transcnn-v1': None,
    'hatnet': re.compile(r'blocks\.\d+\.\d+\.attn\.proj_norm\.'),
}

# Attention projections: 1x1 convs there, Linear layers here.
_PROJECTIONS = ('qkv', 'q', 'kv', 'proj')


def _rules(version: str) -> List[Tuple[re.Pattern, str]]:
    """(pattern, replacement) pairs from released names to ours.

    ``{J}`` in a replacement is the block's index inside our stage, filled in
    by :func:`_rename`.
    """
    n = _NORM[version]
    # An IRB conv of the released block, and where it goes in ours.
    irb, ours = r'blocks\.(\d+)\.(\d+)\.conv\.conv', r'stages.\1.{J}.irb.'
    # A downsampling layer (dsK), and our stage's TDB.
    ds, tdb = r'ds([234])\.', r'stages.{K}.0.'
    common = [
        (r'patch_embed\.0\.(weight|bias)$', r'stem.conv1.conv.\1'),
        (r'patch_embed\.1\.(.+)$', rf'stem.conv1.{n}.\1'),
        (r'patch_embed\.3\.(weight|bias)$', r'stem.conv2.conv.\1'),
        (r'blocks\.(\d+)\.(\d+)\.attn\.(.+)$', r'stages.\1.{J}.attn.\3'),
        (irb + r'2\.0\.weight$', ours + 'depthwise.conv.weight'),
        (irb + r'3\.0\.weight$', ours + 'project.conv.weight'),
        (irb + r'3\.1\.(.+)$', ours + rf'project.{n}.\3'),
        (ds + r'conv\.(weight|bias)$', tdb + r'conv_branch.conv.\2'),
    ]
    if version == 'transcnn-v1':
        # Fig. 1c IRB: conv -> BN (-> SiLU) for each of the three convs;
        # TDB: BN after each branch's conv.
        return common + [
            (irb + r'1\.0\.weight$', ours + 'expand.conv.weight'),
            (irb + r'1\.1\.(.+)$', ours + r'expand.bn.\3'),
            (irb + r'2\.1\.(.+)$', ours + r'depthwise.bn.\3'),
            (ds + r'norm1\.(.+)$', tdb + r'conv_branch.bn.\2'),
            (ds + r'residual\.(weight|bias)$', tdb + r'pool_branch.conv.\2'),
            (ds + r'norm2\.(.+)$', tdb + r'pool_branch.bn.\2'),
        ]
    # HAT-Net IRB: GroupNorm -> 1x1 conv -> SiLU, depthwise conv -> SiLU,
    # 1x1 conv -> GroupNorm; TDB: one conv + GroupNorm.
    return common + [
        (irb + r'1\.0\.(.+)$', ours + r'expand.gn.\3'),
        (irb + r'1\.1\.weight$', ours + 'expand.conv.weight'),
        (ds + r'norm\.(.+)$', tdb + r'conv_branch.gn.\2'),
    ]


def detect_version(state_dict: dict) -> Optional[str]:
    """Which released layout ``state_dict`` has, or None if neither.

    The downsampling blocks tell the two versions apart: the first version's
    has a pooled ``residual`` branch, HAT-Net's a single ``norm``.
    """
    if 'ds2.residual.weight' in state_dict:
        return 'transcnn-v1'
    if 'ds2.norm.weight' in state_dict:
        return 'hatnet'
    return None


def infer_arch(state_dict: dict) -> dict:
    """The macro layout a released state dict has, read off its shapes: a
    dict of ``channels``, ``depths``, ``kernel_sizes`` and ``expand_ratios``
    (one entry per stage), as in :data:`.presets.ARCH_SETTINGS`. The head
    dim is not in the weights."""
    arch = dict(channels=[], depths=[], kernel_sizes=[], expand_ratios=[])
    for stage in range(4):
        depth = 0
        while f'blocks.{stage}.{depth}.attn.qkv.weight' in state_dict:
            depth += 1
        if depth == 0:
            raise KeyError(f'no block of stage {stage} '
                           f"('blocks.{stage}.0.attn.qkv.weight') in the "
                           'checkpoint')
        depthwise = state_dict[f'blocks.{stage}.0.conv.conv2.0.weight']
        channels = state_dict[f'blocks.{stage}.0.attn.proj.weight'].shape[0]
        arch['channels'].append(channels)
        arch['depths'].append(depth)
        arch['kernel_sizes'].append(depthwise.shape[-1])
        arch['expand_ratios'].append(depthwise.shape[0] // channels)
    return arch


def matching_presets(state_dict: dict) -> List[str]:
    """The released presets whose macro layout a released state dict has."""
    version = detect_version(state_dict)
    arch = infer_arch(state_dict)
    return [name for name, info in RELEASED.items()
            if info.version == version and all(
                list(ARCH_SETTINGS[name][k]) == v for k, v in arch.items())]


def _rename(key: str, rules) -> Optional[str]:
    for pattern, repl in rules:
        match = pattern.match(key)
        if match is None:
            continue
        new = match.expand(repl)
        if '{J}' in new:
            stage, block = int(match.group(1)), int(match.group(2))
            # Our stages after the first open with their TDB (index 0).
            new = new.replace('{J}', str(block + (1 if stage > 0 else 0)))
        if '{K}' in new:
            new = new.replace('{K}', str(int(match.group(1)) - 1))
        return new
    return None


def convert_released(state_dict: dict,
                     version: Optional[str] = None
                     ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], str]:
    """Rename a released state dict to our backbone and head layout.

    Args:
        state_dict: the released model's state dict (already unwrapped from
            ``{'model': ...}`` and stripped of ``module.``; see
            :func:`mmtranscnn.models.pretrained.state_dict_of`).
        version: ``'transcnn-v1'`` or ``'hatnet'``; None detects it from
            the keys.

    Returns:
        ``(backbone, head, version)``: the backbone's tensors under our
        names (no prefix), the classifier's under mmpretrain's
        ``LinearClsHead`` names (``fc.weight``, ``fc.bias``), and the version.

    Raises:
        ValueError: the layout is not a released one, or ``version`` is not
            one of :data:`VERSIONS`.
        KeyError: some keys have no counterpart (all of them are named).
    """
    if version is None:
        version = detect_version(state_dict)
        if version is None:
            raise ValueError(
                'not a released TransCNN/HAT-Net state dict: it has neither '
                "'ds2.residual.weight' (TransCNN.py) nor 'ds2.norm.weight' "
                f'(HAT_Net.py); its first keys are {sorted(state_dict)[:5]}')
    if version not in VERSIONS:
        raise ValueError(f'version must be one of {VERSIONS}, got '
                         f'{version!r}')
    rules = [(re.compile(p), r) for p, r in _rules(version)]
    unused = UNUSED_RELEASED_KEYS[version]
    backbone, head, unmapped = {}, {}, []
    for key, value in state_dict.items():
        if unused is not None and unused.match(key):
            continue
        if key in ('classifier.1.weight', 'classifier.1.bias'):
            head['fc.' + key.rsplit('.', 1)[1]] = value
            continue
        new = _rename(key, rules)
        if new is None:
            unmapped.append(key)
            continue
        if (new.endswith('.weight') and new.rsplit('.', 2)[-2] in _PROJECTIONS
                and '.attn.' in new and value.dim() == 4):
            value = value.flatten(1)  # (out, in, 1, 1) -> (out, in)
        backbone[new] = value
    if unmapped:
        shown = ', '.join(unmapped[:12])
        more = f', ... ({len(unmapped)} in all)' if len(unmapped) > 12 else ''
        raise KeyError(f'{len(unmapped)} keys of the {version} checkpoint '
                       f'have no counterpart in TransCNN: {shown}{more}')
    return backbone, head, version


__all__ = ['RELEASED', 'ReleasedModel', 'UNUSED_RELEASED_KEYS', 'VERSIONS',
           'convert_released',
           'detect_version', 'infer_arch', 'matching_presets']
