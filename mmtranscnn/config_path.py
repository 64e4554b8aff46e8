"""Where our configs are, so configs in other projects can inherit them.

mmengine resolves ``pkg::path`` bases only for the packages in its own
``MODULE2PACKAGE`` table (and only for paths with a folder in them), so
``mmtranscnn::retinanet_transcnn_base.py`` does not work. A downstream config
names the installed file instead; mmengine evaluates the ``_base_``
expression when it reads a config, so this works from any directory and with
any training tool (ours, mmdet's, ``mim train``)::

    # my_project/configs/retinanet_transcnn_base_mydata.py
    _base_ = __import__('mmtranscnn').get_config_path(
        'retinanet_transcnn_base.py')
    model = dict(backbone=dict(grid_sizes=(8, 4, 2, 0)))

``python -m mmtranscnn.config_path [NAME]`` prints the folder (or a file's
path), e.g. for a literal path in ``_base_`` or to copy a config.
"""
import os.path as osp
import sys
from typing import List

PACKAGE_DIR = osp.dirname(osp.abspath(__file__))


def configs_root() -> str:
    """The folder of the configs that ship with this installation.

    An installed package carries them in ``mmtranscnn/.mim/configs`` (what
    ``mim`` reads too); a source checkout that was never installed has only
    the repository's ``configs/``.

    Returns:
        str: an absolute folder path.
    """
    for candidate in (osp.join(PACKAGE_DIR, '.mim', 'configs'),
                      osp.join(osp.dirname(PACKAGE_DIR), 'configs')):
        if osp.isdir(candidate):
            return osp.realpath(candidate)
    raise FileNotFoundError(
        f'no configs found next to {PACKAGE_DIR} (looked for .mim/configs '
        'and ../configs). Reinstall mmtranscnn (pip install mmtranscnn, or '
        'pip install -e . in the repository), which puts them there.')


def list_configs() -> List[str]:
    """Names of all shipped configs, relative to :func:`configs_root`."""
    import glob
    root = configs_root()
    return sorted(
        osp.relpath(p, root)
        for p in glob.glob(osp.join(root, '**', '*.py'), recursive=True))


def get_config_path(name: str) -> str:
    """Absolute path of a shipped config, for ``_base_`` in another project.

    Args:
        name (str): the config's path relative to ``configs/``, e.g.
            ``'retinanet_transcnn_base.py'`` or
            ``'tiny/retinanet_transcnn_small_shapes.py'``.

    Returns:
        str: the absolute path of the file.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'name must be a config path relative to configs/, '
                         f'e.g. "retinanet_transcnn_base.py"; got {name!r}')
    root = configs_root()
    path = osp.normpath(osp.join(root, name))
    if not path.startswith(root + osp.sep) or not osp.isfile(path):
        top_level = [c for c in list_configs() if not c.startswith('_base_')]
        raise FileNotFoundError(
            f'mmtranscnn has no config {name!r} under {root}; available: '
            f'{", ".join(top_level)}')
    return path


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    print(get_config_path(argv[0]) if argv else configs_root())


if __name__ == '__main__':
    main()
