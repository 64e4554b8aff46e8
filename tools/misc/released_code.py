"""The authors' released model files, as the tools beside this one use them.

``BUILDERS`` maps each of our released presets to the authors' file and its
builder function; :func:`load_module` imports such a file from a checkout
(``--code-dir``). The authors' code itself is not part of this repository.
"""
import importlib.util
import os.path as osp
import sys

# our preset -> (the authors' file, its builder function)
BUILDERS = {
    'transcnn-v1-tiny': ('TransCNN.py', 'TransCNN_Tiny'),
    'transcnn-v1-small': ('TransCNN.py', 'TransCNN_Small'),
    'transcnn-v1-medium': ('TransCNN.py', 'TransCNN_Medium'),
    'transcnn-v1-large': ('TransCNN.py', 'TransCNN_Large'),
    'hatnet-tiny': ('HAT_Net.py', 'HAT_Net_tiny'),
    'hatnet-small': ('HAT_Net.py', 'HAT_Net_small'),
    'hatnet-medium': ('HAT_Net.py', 'HAT_Net_medium'),
    'hatnet-large': ('HAT_Net.py', 'HAT_Net_large'),
}


def load_module(path):
    """Import the Python file at ``path`` as a module of its own name.

    Args:
        path: e.g. ``<code-dir>/HAT_Net.py``.
    """
    spec = importlib.util.spec_from_file_location(
        osp.splitext(osp.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    # timm's register_model looks the defining module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
