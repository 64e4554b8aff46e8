"""Registration: scoped names without imports, bare names after import.

The checks run in new interpreters, because what matters is what a fresh
process sees: mmengine must import ``mmtranscnn.registry`` on demand. The
interpreters are independent, so they all start at the module's first test
and run side by side, one per core (each is a single-threaded import).
"""
import functools
import subprocess
import sys
import textwrap

import pytest

from side_by_side import side_by_side

SCOPES = ['mmdet', 'mmseg', 'mmpretrain']
BACKBONE = ("dict(type='{name}', arch=dict(channels=[64], depths=[1], "
            "kernel_sizes=[3], expand_ratios=[2]), grid_sizes=(4,), "
            "out_indices=(0,))")


def scoped_name_check(scope):
    return f"""
        import sys
        from {scope}.registry import MODELS
        assert 'mmtranscnn' not in sys.modules
        model = MODELS.build({BACKBONE.format(name='mmtranscnn.TransCNN')})
        print(type(model).__module__, type(model).__name__)
    """


def bare_name_check(scopes):
    """Build the backbone by its bare name in each scope in turn, after
    importing mmtranscnn as ``custom_imports`` does; one interpreter serves
    every scope, as one training process would."""
    return f"""
        import importlib
        from mmengine.registry import init_default_scope
        from mmengine.utils import import_modules_from_strings
        for scope in {scopes!r}:
            MODELS = importlib.import_module(scope + '.registry').MODELS
            init_default_scope(scope)
            import_modules_from_strings(['mmtranscnn'])
            model = MODELS.build({BACKBONE.format(name='TransCNN')})
            print(scope, type(model).__name__)
    """


# Hide mmdet/mmseg/mmpretrain: import mmtranscnn must still work.
WITHOUT_CODEBASES = f"""
    import sys
    for name in {SCOPES!r}:
        sys.modules[name] = None  # makes `import name` fail
    import mmtranscnn
    from mmtranscnn.registry import MODELS
    model = MODELS.build({BACKBONE.format(name='TransCNN')})
    assert mmtranscnn.__version__
"""


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope='module')
def checks():
    """Check name -> future of its interpreter's stdout (``.result()``
    raises what the run raised)."""
    codes = {('scoped', s): scoped_name_check(s) for s in SCOPES}
    codes['bare'] = bare_name_check(SCOPES)
    codes['without codebases'] = WITHOUT_CODEBASES
    return side_by_side({key: functools.partial(_run, code)
                         for key, code in codes.items()})


@pytest.mark.parametrize('scope', SCOPES)
def test_scoped_name_needs_no_import(checks, scope):
    out = checks['scoped', scope].result()
    assert out.split() == ['mmtranscnn.models.transcnn', 'TransCNN']


@pytest.mark.parametrize('scope', SCOPES)
def test_bare_name_after_custom_import(checks, scope):
    lines = dict(line.split() for line in
                 checks['bare'].result().splitlines())
    assert lines[scope] == 'TransCNN'


def test_import_does_not_require_downstream_codebases(checks):
    checks['without codebases'].result()
