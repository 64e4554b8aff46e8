"""Scripts under tools/ (no package) imported as modules by the tests."""
import importlib.util
import os.path as osp
import sys
from types import ModuleType
from typing import Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(relpath: str, name: Optional[str] = None,
              tool_dir_on_path: bool = False) -> ModuleType:
    """Import a script as a module: a fresh one on every call, not put in
    ``sys.modules``.

    Args:
        relpath (str): the script's path from the repository root, e.g.
            ``'tools/train.py'``.
        name (str, optional): the module's ``__name__``. Defaults to
            ``'tool_<file name without .py>'``.
        tool_dir_on_path (bool): put the script's folder first on
            ``sys.path`` while the script runs, as ``python <script>``
            does, for scripts that import a sibling (``speed_harness``);
            it is taken off again afterwards. Defaults to False.

    Returns:
        ModuleType: the executed module.
    """
    path = osp.join(REPO, relpath)
    if name is None:
        name = 'tool_' + osp.splitext(osp.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = osp.dirname(osp.abspath(path))
    if tool_dir_on_path:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        if tool_dir_on_path:
            sys.path.remove(folder)
    return module
