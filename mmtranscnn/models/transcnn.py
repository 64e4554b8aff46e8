"""TransCNN backbone (§3.3, Table 1).

Stage 1 is a two-conv stem (stride 4). Stages 2-5 (``stages[0..3]`` here)
stack H-MHSA + IRB blocks at strides 4/8/16/32; a two-branch downsampling
block (TDB) opens every stage after the first. The backbone returns the
stage outputs selected by ``out_indices`` as a tuple, which is what mmdet
necks, mmseg decode heads and mmpretrain's GlobalAveragePooling expect.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.model.weight_init import trunc_normal_
from mmengine.registry import MODELS as MMENGINE_MODELS
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmtranscnn.registry import MODELS

from .blocks import (ConvStem, InvertedResidual, TransCNNBlock,
                     TwoBranchDownsample)
from .hmhsa import HMHSA, QUERY_FORMS, parse_grid_sizes
from .memory import to_map_layout, to_nchw, use_map_layout
from .presets import ARCH_SETTINGS
from .pretrained import load_backbone_checkpoint
from .released_blocks import RELEASED_VARIANTS

ARCH_KEYS = ('channels', 'depths', 'kernel_sizes', 'expand_ratios')
# Optional arch keys: the released presets carry their own defaults.
ARCH_OPTIONAL_KEYS = ('stem_channels', 'variant', 'head_dim', 'grid_sizes',
                      'pool_ratios')

#: The paper's network (§3.3, Fig. 1): its norm and the classes of its stem,
#: downsampling block, attention and IRB.
PAPER = dict(norm_cfg=dict(type='BN'), stem=ConvStem,
             downsample=TwoBranchDownsample, attn=HMHSA, irb=InvertedResidual)
#: Every variant by name: the paper's, and the authors' released code's
#: (:mod:`.released_blocks`), which their eight checkpoints need exactly.
VARIANTS: Dict[str, dict] = {'paper': PAPER, **RELEASED_VARIANTS}


#: Examples for the messages of bad norm/act configs (any layer registered
#: in mmengine's MODELS is accepted).
LAYER_EXAMPLES = dict(norm_cfg="'BN', 'SyncBN', 'GN', 'LN'",
                      act_cfg="'SiLU', 'ReLU', 'GELU', 'HSwish'")


def _check_args(in_channels, with_cp, norm_eval, **layer_cfgs) -> None:
    """Refuse arguments that would build a network they do not describe,
    naming the field (mmcv's builders would raise a registry KeyError
    naming neither the argument nor the allowed values).

    Args:
        in_channels, with_cp, norm_eval: as :class:`TransCNN` takes them.
        **layer_cfgs: ``norm_cfg`` and ``act_cfg`` (resolved).
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) \
            or in_channels < 1:
        raise ValueError(f'in_channels must be a positive int, got '
                         f'{in_channels!r}')
    for name, flag in (('with_cp', with_cp), ('norm_eval', norm_eval)):
        if not isinstance(flag, bool):  # 'yes' would pass as truthy
            raise ValueError(f'{name} must be True or False, got {flag!r}')
    for field, cfg in layer_cfgs.items():
        layer = cfg.get('type') if isinstance(cfg, dict) else None
        if isinstance(layer, type):
            continue
        with MMENGINE_MODELS.switch_scope_and_registry(None) as registry:
            found = isinstance(layer, str) and registry.get(layer)
        if not found:
            raise ValueError(
                f'{field} must be a dict whose type is a registered layer '
                f'(e.g. {LAYER_EXAMPLES[field]}), got {cfg!r}')


@MODELS.register_module()
class TransCNN(BaseModule):
    """TransCNN: H-MHSA blocks alternating with inverted residuals.

    Args:
        arch (str | dict): ``'small'`` or ``'base'`` (Table 1, our reading
            of the paper), one of the eight presets of the authors' released
            ImageNet weights (``'transcnn-v1-{tiny,small,medium,large}'``
            from ``TransCNN.py``, ``'hatnet-{tiny,small,medium,large}'``
            from ``HAT_Net.py``; see :mod:`.released`), or a dict with the
            keys ``channels``, ``depths``, ``kernel_sizes`` and
            ``expand_ratios`` (one entry per stage) and optionally
            ``stem_channels`` (default 16), ``variant`` (a key of
            :data:`VARIANTS`, default 'paper'), ``head_dim``, ``grid_sizes``
            and ``pool_ratios`` (defaults for the arguments of the same
            names). Default: 'base'.
        grid_sizes (Sequence, optional): one entry per stage: an int G0, a
            sequence of per-level grid sizes ``(G0, G1, ...)``, or 0 /
            ``()`` for plain attention. None takes the preset's: (8, 4, 2,
            0) for Table 1's, the paper's ImageNet setting for 224x224
            inputs (§4.4 uses (16, 8, 4, 0) for COCO); the released presets'
            level-0 windows, (8, 8, 8, 0) or (8, 7, 7, 0). Default: None.
        pool_ratios (Sequence, optional): released presets only (their
            attention pools by a ratio of its own, see
            :class:`~.released_blocks.ReleasedHMHSA`): one entry per stage,
            like ``grid_sizes``, the pooling ratio of each level above 0, 0
            for a plain stage. None takes the preset's ((8, 4, 2, 0)).
            Table 1's networks pool each level by its grid (Eq. 8). Holds no
            weights. Default: None.
        in_channels (int): input image channels, e.g. 1 for grayscale or
            4 for RGB + depth; weights loaded from a checkpoint must match
            the stem's. Default: 3.
        head_dim (int, optional): channels per attention head; None takes
            the preset's (48 for 'hatnet-tiny', else 64). Default: None.
        query_from (str): H-MHSA query form, 'full' (§4.1) or 'merged'
            (Eq. 9-12). Default: 'full'.
        out_indices (int | Sequence[int]): stages to output (0-3 for
            strides 4/8/16/32), increasing and without repeats, so the
            outputs come in the order asked; negative indices are refused.
            Stages after the last one named are still built, so full
            checkpoints load strictly, but they are frozen and never run (no
            compute, and no parameters that DDP would find unused).
            Default: (0, 1, 2, 3).
        frozen_stages (int): freeze the stem (0) and stages up to this index
            (1..4 = stages[0..3]); -1 freezes nothing. Default: -1.
        norm_eval (bool): keep norm layers in eval mode while training
            (frozen BN statistics, as detection fine-tuning usually wants).
            Default: False.
        with_cp (bool): gradient checkpointing per block. Default: False.
        drop_path_rate (float): stochastic depth, increasing linearly over
            the blocks up to this value. Default: 0.
        norm_cfg (dict, optional): norm config; None takes the variant's:
            BN, or GroupNorm(1, C, eps=1e-6) for HAT-Net. Default: None.
        act_cfg (dict): activation config. Default: dict(type='SiLU').
        init_cfg (dict, optional): initialisation; ``dict(type='Pretrained',
            checkpoint=PATH, prefix='backbone.')`` loads our classification
            (or backbone-only) checkpoint strictly and reports any key that
            did not load. Add ``strict=False`` to accept a partial load. A
            released preset also loads the authors' file as downloaded
            (``checkpoint='HAT-Net_Small.pth'``; see :mod:`.released`).

    Attributes:
        arch_name (str | None): the preset built, None for an arch dict.
        variant (str): the key of :data:`VARIANTS` the blocks are built
            with.
        released_version (str | None): the released layout a checkpoint of
            the authors must have ('transcnn-v1' or 'hatnet'), None for
            Table 1's presets.
    """
    #: The presets by name: Table 1's and the released ones (the numbers
    #: live in :mod:`.presets`).
    arch_zoo: Dict[str, dict] = ARCH_SETTINGS

    def __init__(self,
                 arch: Union[str, dict] = 'base',
                 grid_sizes: Optional[Sequence] = None,
                 in_channels: int = 3,
                 head_dim: Optional[int] = None,
                 query_from: str = 'full',
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 drop_path_rate: float = 0.,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: dict = dict(type='SiLU'),
                 pool_ratios: Optional[Sequence] = None,
                 init_cfg: Optional[Union[dict, list]] = None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self._parse_arch(arch)
        # The preset's name (None for a dict): what released files fit.
        self.arch_name = arch.lower() if isinstance(arch, str) else None
        settings = self.arch_settings
        channels = settings['channels']
        num_stages = len(channels)
        self.variant = settings.get('variant', 'paper')
        layers = VARIANTS[self.variant]
        # The released layout a checkpoint must have (models/released.py).
        self.released_version = (None if self.variant == 'paper' else
                                 self.variant)
        if grid_sizes is None:
            grid_sizes = settings.get('grid_sizes', (8, 4, 2, 0))
        if pool_ratios is None:
            pool_ratios = settings.get('pool_ratios')
        elif self.variant == 'paper':
            raise ValueError(
                'pool_ratios applies to the released presets only; the '
                "paper's attention pools each level by its grid (Eq. 8): "
                'set grid_sizes instead')
        if head_dim is None:
            head_dim = settings.get('head_dim', 64)
        if norm_cfg is None:
            norm_cfg = layers['norm_cfg']
        _check_args(in_channels, with_cp, norm_eval, norm_cfg=norm_cfg,
                    act_cfg=act_cfg)
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f'head_dim must be a positive int, got '
                             f'{head_dim!r}')
        self.grid_sizes = self._parse_grid_sizes(grid_sizes, num_stages)
        self.pool_ratios = self._parse_pool_ratios(pool_ratios,
                                                   self.grid_sizes)
        self.out_indices = self._parse_out_indices(out_indices, num_stages)
        if not isinstance(frozen_stages, int) or not \
                -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be an int in [-1, '
                             f'{num_stages}], got {frozen_stages!r}')
        if query_from not in QUERY_FORMS:
            raise ValueError(f'query_from must be one of {QUERY_FORMS}, got '
                             f'{query_from!r}')
        if not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got '
                             f'{drop_path_rate!r}')
        bad = [c for c in channels if c % head_dim]
        if bad:
            raise ValueError(f'arch channels {bad} are not multiples of '
                             f'head_dim={head_dim}')
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.num_features = list(channels)

        self.stem = layers['stem'](in_channels, settings['stem_channels'],
                                   channels[0], norm_cfg=norm_cfg,
                                   act_cfg=act_cfg)
        depths = self.arch_settings['depths']
        rates = iter(torch.linspace(0, drop_path_rate, sum(depths)).tolist())
        self.stages = ModuleList()
        for i, (dims, depth) in enumerate(zip(channels, depths)):
            blocks = []
            if i > 0:
                blocks.append(layers['downsample'](
                    channels[i - 1], dims, norm_cfg=norm_cfg,
                    act_cfg=act_cfg))
            for _ in range(depth):
                rate = next(rates)
                attn_cfg = dict(type=layers['attn'], embed_dims=dims,
                                grid_sizes=self.grid_sizes[i],
                                head_dim=head_dim, query_from=query_from,
                                norm_cfg=norm_cfg, drop_path_rate=rate)
                if self.pool_ratios[i] is not None:
                    attn_cfg['pool_ratios'] = self.pool_ratios[i]
                irb_cfg = dict(type=layers['irb'], channels=dims,
                               expand_ratio=settings['expand_ratios'][i],
                               kernel_size=settings['kernel_sizes'][i],
                               norm_cfg=norm_cfg, act_cfg=act_cfg,
                               drop_path_rate=rate)
                blocks.append(TransCNNBlock(attn_cfg, irb_cfg,
                                            with_cp=with_cp))
            self.stages.append(Sequential(*blocks))
        # Maps and conv weights channels-last from the stem on (.memory).
        use_map_layout(self)
        self._freeze_stages()

    # -- argument parsing ---------------------------------------------------
    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                table1 = sorted(k for k, v in cls.arch_zoo.items()
                                if 'variant' not in v)
                released = [k for k, v in cls.arch_zoo.items()
                            if 'variant' in v]
                raise ValueError(f'arch must be one of {table1} (Table 1), '
                                 f'one of the released presets {released}, '
                                 f'or a dict with keys {ARCH_KEYS}, got '
                                 f'{arch!r}')
            settings = copy.deepcopy(cls.arch_zoo[arch.lower()])
        elif isinstance(arch, dict):
            missing = [k for k in ARCH_KEYS if k not in arch]
            unknown = sorted(set(arch) - set(ARCH_KEYS) -
                             set(ARCH_OPTIONAL_KEYS))
            if missing or unknown:
                raise ValueError(
                    f'arch dict needs the keys {ARCH_KEYS} (and optionally '
                    f'{ARCH_OPTIONAL_KEYS}); missing {missing}, unknown '
                    f'{unknown}')
            if arch.get('variant', 'paper') not in VARIANTS:
                raise ValueError(f'arch variant must be one of '
                                 f'{sorted(VARIANTS)}, got '
                                 f'{arch["variant"]!r}')
            settings = copy.deepcopy(dict(arch))
            lengths = {k: len(settings[k]) for k in ARCH_KEYS}
            if len(set(lengths.values())) != 1 or 0 in lengths.values():
                raise ValueError(f'arch fields {ARCH_KEYS} must be non-empty '
                                 f'and of equal length, got {lengths}')
            for key in ARCH_KEYS:
                for j, val in enumerate(settings[key]):
                    if not isinstance(val, (int, float)) or val <= 0:
                        raise ValueError(f'arch {key}[{j}] must be a '
                                         f'positive number, got {val!r}')
            for j, k in enumerate(settings['kernel_sizes']):
                if not isinstance(k, int) or k % 2 == 0:
                    raise ValueError(f'arch kernel_sizes[{j}] must be an odd '
                                     f'int, got {k!r}')
        else:
            raise ValueError(f'arch must be a str or a dict, got '
                             f'{type(arch).__name__}')
        settings.setdefault('stem_channels', 16)
        return settings

    @staticmethod
    def _parse_grid_sizes(grid_sizes, num_stages: int) -> Tuple[tuple, ...]:
        if isinstance(grid_sizes, (int, str)) or not isinstance(
                grid_sizes, (list, tuple)) or len(grid_sizes) != num_stages:
            raise ValueError(
                f'grid_sizes must be a sequence with one entry per stage '
                f'({num_stages}), each an int G0, a sequence (G0, G1, ...) or '
                f'0 for plain attention; got {grid_sizes!r}')
        return tuple(
            parse_grid_sizes(g, f'grid_sizes[{i}]')
            for i, g in enumerate(grid_sizes))

    @staticmethod
    def _parse_pool_ratios(pool_ratios, grid_sizes) -> Tuple[tuple, ...]:
        """Per-stage pooling ratios; None entries pool by the grids."""
        num_stages = len(grid_sizes)
        if pool_ratios is None:
            return tuple(None for _ in grid_sizes)
        if isinstance(pool_ratios, (int, str)) or not isinstance(
                pool_ratios, (list, tuple)) or len(pool_ratios) != num_stages:
            raise ValueError(
                f'pool_ratios must be None or a sequence with one entry per '
                f'stage ({num_stages}), each an int R1, a sequence (R1, R2, '
                f'...) with one ratio per grid level, or 0 for a plain '
                f'stage; got {pool_ratios!r}')
        result = []
        for i, (r, grids) in enumerate(zip(pool_ratios, grid_sizes)):
            ratios = parse_grid_sizes(r, f'pool_ratios[{i}]')
            if len(ratios) != len(grids):
                raise ValueError(
                    f'pool_ratios[{i}]={r!r} must have one ratio per grid '
                    f'level of grid_sizes[{i}]={grids} (0 for a plain '
                    f'stage)')
            result.append(ratios or None)
        return tuple(result)

    @staticmethod
    def _parse_out_indices(out_indices, num_stages: int) -> Tuple[int, ...]:
        if isinstance(out_indices, int) and not isinstance(out_indices, bool):
            out_indices = (out_indices, )
        if not isinstance(out_indices, (list, tuple)) or not out_indices:
            raise ValueError(f'out_indices must be an int or a non-empty '
                             f'sequence of ints in [0, {num_stages - 1}], '
                             f'got {out_indices!r}')
        for idx in out_indices:
            # Negative indices are refused, not wrapped: stage numbers are
            # what necks' in_channels are written against.
            if isinstance(idx, bool) or not isinstance(idx, int) or \
                    not 0 <= idx < num_stages:
                raise ValueError(f'out_indices entries must be ints in '
                                 f'[0, {num_stages - 1}], got {idx!r} in '
                                 f'{tuple(out_indices)!r}')
        # Outputs come in stage order (as mmdet's backbones give them), so
        # an order that forward would not keep is refused.
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f'out_indices must be increasing without '
                             f'repeats (outputs come in stage order), got '
                             f'{tuple(out_indices)!r}; use '
                             f'{tuple(sorted(set(out_indices)))!r}')
        return tuple(out_indices)

    # -- training behaviour -------------------------------------------------
    def _freeze_stages(self) -> None:
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.stem)
        frozen.extend(self.stages[:max(self.frozen_stages, 0)])
        # Stages past the last output never run (see out_indices).
        frozen.extend(self.stages[max(self.out_indices) + 1:])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'TransCNN':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # -- weights ------------------------------------------------------------
    def init_weights(self) -> None:
        init_cfg = self.init_cfg
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            # Our own loader instead of mmengine's PretrainedInit, which loads
            # with strict=False and only logs what did not match.
            load_backbone_checkpoint(
                self,
                init_cfg['checkpoint'],
                prefix=init_cfg.get('prefix'),
                strict=init_cfg.get('strict', True),
                map_location=init_cfg.get('map_location', 'cpu'),
                logger=MMLogger.get_current_instance())
            self._is_init = True
            return
        super().init_weights()
        if init_cfg is None:
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    trunc_normal_(module.weight, std=.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode='fan_out',
                                            nonlinearity='relu')
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    # -- forward ------------------------------------------------------------
    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Args: x (Tensor): (B, in_channels, H, W) images, H, W >= 32.

        Returns:
            tuple[Tensor]: stage outputs for ``out_indices``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'TransCNN expects a (B, {self.in_channels}, H, '
                             f'W) image tensor, got shape {tuple(x.shape)}')
        x = self.stem(to_map_layout(x))
        outs = []
        for i, stage in enumerate(self.stages[:max(self.out_indices) + 1]):
            x = stage(x)
            if i in self.out_indices:
                # NCHW-contiguous, the layout necks and heads are written
                # for.
                outs.append(to_nchw(x))
        return tuple(outs)
