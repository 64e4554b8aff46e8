"""Activate the OpenMMLab codebase a config is written for."""
import importlib

from mmengine.registry import init_default_scope


def setup_codebase(cfg) -> str:
    """Register the modules of the config's codebase and mmtranscnn's, and
    make the codebase the default scope (before the Runner builds anything).

    Args:
        cfg (Config): A config; ``cfg.default_scope`` (default 'mmengine')
            must be the import name of an installed codebase.

    Returns:
        str: The scope that was set up.
    """
    importlib.import_module('mmtranscnn')  # registers TransCNN
    scope = cfg.get('default_scope') or 'mmengine'
    if not isinstance(scope, str):
        raise TypeError(f'default_scope must be a str such as "mmdet", '
                        f'"mmseg" or "mmpretrain", but got {scope!r}')
    if scope not in ('mmengine', 'mmtranscnn'):
        try:
            importlib.import_module(scope)
            utils = importlib.import_module(f'{scope}.utils')
        except ModuleNotFoundError as exc:
            if exc.name == scope:
                raise ImportError(
                    f'The config sets default_scope={scope!r}, but no '
                    f'package named {scope!r} is installed (mmdet: pip '
                    'install mmdet, mmseg: pip install mmsegmentation, '
                    'mmpretrain: pip install mmpretrain).') from exc
            if exc.name != f'{scope}.utils':
                raise  # the codebase is there but one of its imports is not
            utils = None
        register_all_modules = getattr(utils, 'register_all_modules', None)
        if register_all_modules is not None:
            register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return scope
