"""Activate the OpenMMLab codebase a config is written for.

A config names its codebase through ``default_scope`` ('mmdet', 'mmseg',
'mmpretrain', or 'mmengine' for plain mmengine configs). The training and
test tools call :func:`setup_codebase` so that every module of that codebase
is registered (its ``register_all_modules``) and the default scope is set
before the Runner builds anything, and so that mmtranscnn's own
registrations are active whatever the config imports.
"""
import importlib

from mmengine.registry import init_default_scope

# Scopes that need no codebase set-up beyond importing mmtranscnn.
_PLAIN_SCOPES = ('mmengine', 'mmtranscnn')


def setup_codebase(cfg) -> str:
    """Register the config's codebase and set it as the default scope.

    Args:
        cfg (Config): A config; ``cfg.default_scope`` (default 'mmengine')
            must be the import name of an installed codebase.

    Returns:
        str: The scope that was set up.
    """
    # The package registers TransCNN and the CPU DDP wrapper on import.
    importlib.import_module('mmtranscnn')
    scope = cfg.get('default_scope') or 'mmengine'
    if not isinstance(scope, str):
        raise TypeError(f'default_scope must be a str such as "mmdet", '
                        f'"mmseg" or "mmpretrain", but got {scope!r}')
    if scope not in _PLAIN_SCOPES:
        try:
            importlib.import_module(scope)
        except ModuleNotFoundError as exc:
            if exc.name != scope:
                raise  # the codebase is there but one of its imports is not
            raise ImportError(
                f'The config sets default_scope={scope!r}, but no package '
                f'named {scope!r} is installed (mmdet: pip install mmdet, '
                'mmseg: pip install mmsegmentation, mmpretrain: pip install '
                'mmpretrain).') from exc
        try:
            utils = importlib.import_module(f'{scope}.utils')
        except ModuleNotFoundError as exc:
            if exc.name != f'{scope}.utils':
                raise
            utils = None
        register_all_modules = getattr(utils, 'register_all_modules', None)
        if register_all_modules is not None:
            register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return scope
