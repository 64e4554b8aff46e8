"""The options of ``tools/train.py`` / ``tools/test.py``: those of the
OpenMMLab tools, with the config's own codebase's behaviour where the
codebases differ (where ``--show-dir`` pictures go, what ``--out`` writes).
"""
import argparse
import os
import os.path as osp
from typing import List, Optional

from mmengine.config import DictAction
from mmengine.device import get_device
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmtranscnn.utils.safe_loading import allow_checkpoint_globals

from .dist import LAUNCHERS, check_launcher

PICKLE_SUFFIXES = ('.pkl', '.pickle')


def add_run_options(parser: argparse.ArgumentParser, example: str) -> None:
    """Add the options both tools end with: ``--cfg-options``,
    ``--launcher`` and ``--local_rank``.

    Args:
        parser: the tool's parser.
        example: a ``key=value`` for the ``--cfg-options`` help.
    """
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, xxx=yyy pairs merged into the '
        f'config, e.g. {example} or key="[a,b]"; no spaces')
    parser.add_argument(
        '--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_run_args(parser: argparse.ArgumentParser,
                   argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse a tool's options; ``--local_rank`` becomes ``LOCAL_RANK``
    where the launcher did not set it (mmengine reads the variable)."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _set_common(cfg, args) -> None:
    """``--launcher``, ``--cfg-options`` and ``--work-dir`` (both tools)."""
    check_launcher(args.launcher)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    # work_dir: command line, else the config's, else ./work_dirs/<name>.
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(args.config))[0]
        cfg.work_dir = osp.join('./work_dirs', name)


def merge_train_args(cfg, args):
    """Apply the options of ``tools/train.py`` to ``cfg`` (in place) and
    return it.

    Args:
        cfg (Config): The loaded config.
        args (Namespace): ``config``, ``work_dir``, ``resume`` (None, 'auto'
            or a path), ``amp``, ``auto_scale_lr``, ``cfg_options``,
            ``launcher``.
    """
    _set_common(cfg, args)
    if args.amp:
        optim_wrapper = cfg.get('optim_wrapper')
        if optim_wrapper is None:
            raise RuntimeError('--amp needs an "optim_wrapper" in the config.')
        if get_device() == 'cpu':
            # mmengine's AmpOptimWrapper needs an accelerator; CPUs run
            # bfloat16 autocast without loss scaling.
            optim_wrapper.type = 'CPUBF16AmpOptimWrapper'
            optim_wrapper.pop('loss_scale', None)
            optim_wrapper.pop('dtype', None)
        elif optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            optim_wrapper.type = 'AmpOptimWrapper'
            optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr')
        if not auto_scale_lr or 'base_batch_size' not in auto_scale_lr:
            raise RuntimeError(
                '--auto-scale-lr needs "auto_scale_lr = dict(enable=False, '
                'base_batch_size=...)" in the config (base_batch_size: the '
                'total batch size the learning rate was tuned for).')
        auto_scale_lr.enable = True
    # --resume alone: the latest checkpoint of work_dir (mmengine's
    # resume=True with load_from=None); --resume PATH: that checkpoint.
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == 'auto' else args.resume
    return cfg


def enable_test_visualization(cfg, show_dir: Optional[str] = None,
                              show: bool = False, wait_time: float = 2.):
    """Turn on drawing of test predictions the way the codebase does it.

    Args:
        cfg (Config): The config (changed in place).
        show_dir (str, optional): Where painted images go: mmdet joins it
            to ``work_dir/<timestamp>``, mmpretrain takes it as given,
            mmseg makes it the visualizer's ``save_dir``.
        show (bool): Also show them in a window.
        wait_time (float): Seconds each window stays.
    """
    scope = cfg.get('default_scope') or 'mmengine'
    hook = (cfg.get('default_hooks') or {}).get('visualization')
    if hook is None:
        raise RuntimeError(
            '--show/--show-dir need a visualization hook: add '
            "default_hooks.visualization=dict(type='VisualizationHook') to "
            'the config.')
    if scope not in ('mmdet', 'mmseg', 'mmpretrain'):
        raise ValueError(
            '--show/--show-dir are supported for configs with default_scope '
            f"'mmdet', 'mmseg' or 'mmpretrain', but got {scope!r}")
    hook['enable' if scope == 'mmpretrain' else 'draw'] = True
    if show_dir is not None and scope == 'mmseg':
        if cfg.get('visualizer') is None:
            raise RuntimeError('--show-dir needs a "visualizer" in the '
                               'config (mmseg saves pictures through its '
                               'save_dir).')
        cfg.visualizer.save_dir = show_dir
    elif show_dir is not None:
        hook['out_dir' if scope == 'mmpretrain' else 'test_out_dir'] = show_dir
    if show:
        hook.update(show=True, wait_time=wait_time)


def merge_test_args(cfg, args):
    """Apply the options of ``tools/test.py`` to ``cfg`` (in place) and
    return it.

    Args:
        cfg (Config): The loaded config.
        args (Namespace): ``config``, ``checkpoint``, ``work_dir``, ``tta``
            (optional), ``show``, ``show_dir``, ``wait_time``,
            ``cfg_options``, ``launcher``.
    """
    _set_common(cfg, args)
    # Load only the weights: a config written for training may say
    # resume=True, which would also restore optimizer and schedule.
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if getattr(args, 'tta', False):
        # Wrap the model in the config's tta_model and test with its
        # tta_pipeline (mmdet's and mmseg's dataset bases define them).
        missing = [k for k in ('tta_model', 'tta_pipeline') if k not in cfg]
        if missing:
            raise RuntimeError(
                f'--tta needs {" and ".join(missing)} in the config '
                "(mmseg's dataset bases define both; for mmdet add them as in "
                "mmdet's *_tta.py configs).")
        cfg.model = dict(**cfg.tta_model, module=cfg.model)
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:  # wrappers: ConcatDataset, RepeatDataset
            dataset = dataset['dataset']
        dataset.pipeline = cfg.tta_pipeline
    if args.show or args.show_dir:
        enable_test_visualization(cfg, args.show_dir, args.show,
                                  args.wait_time)
    return cfg


def prepare_prediction_dump(cfg, out: Optional[str]):
    """Arrange for ``--out`` as the config's codebase does: mmseg writes
    prediction maps into the directory ``out`` (its metric's
    ``output_dir``); the others pickle the predictions to the file ``out``.
    Returns None or a metric (mmdet's ``DumpDetResults``, else mmengine's
    ``DumpResults``) to append to ``runner.test_evaluator.metrics``.

    Args:
        cfg (Config): The config (changed in place for mmseg).
        out (str, optional): The ``--out`` value; None does nothing.
    """
    if out is None:
        return None
    scope = cfg.get('default_scope') or 'mmengine'
    if scope == 'mmseg':
        evaluators = cfg.test_evaluator
        for evaluator in (evaluators if isinstance(evaluators, list) else
                          [evaluators]):
            evaluator.update(output_dir=out, keep_results=True)
        return None
    if not out.endswith(PICKLE_SUFFIXES):
        raise ValueError(f'--out must be a pickle file name ending in '
                         f'{PICKLE_SUFFIXES}, but got {out!r}')
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        return DumpDetResults(out_file_path=out)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out)


def build_runner(cfg):
    """Build the config's runner: ``runner_type`` if given, else ``Runner``.

    Args:
        cfg (Config): The complete config.
    """
    # mmengine's loaders (resume, load_from) read mmengine checkpoints with
    # torch's weights_only allow-list; see mmtranscnn.utils.safe_loading.
    allow_checkpoint_globals()
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
