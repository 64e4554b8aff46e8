"""The package is the plugin: how ``mmtranscnn/`` is put together.

* The modules of the package import each other without a cycle (every
  import counts, also those inside functions: a lazy import hides a cycle,
  it does not remove it).
* Nothing in the package imports from ``tools/``, and the benchmark harness
  (CPU and oneDNN description, memory high-water marks) lives under
  ``tools/analysis_tools``, not in the package.
* The process-wide malloc setting is not made by the model (``models/``).
* ``import mmtranscnn`` changes no process-wide torch state.
"""
import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'mmtranscnn'
TOOLS = REPO / 'tools'


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def package_modules() -> Dict[str, Path]:
    """Every module of the package by dotted name (packages by their
    ``__init__``)."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))
            if '.mim' not in p.parts}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name a (possibly relative) ``from`` names."""
    if node.level == 0:
        return node.module or ''
    base = module.split('.')
    if not is_package:
        base.pop()  # a module's level 1 is its package
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))


def imports(path: Path, module: str) -> List[Tuple[str, List[str]]]:
    """Every import statement of ``path``, at any depth of its code
    (functions, branches, ``try``), as ``(module, names)``: the absolute
    module (relative imports resolved) and, for ``from M import a, b``,
    the names taken from it (empty for ``import M``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == '__init__.py'
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((_absolute(node, module, is_package),
                          [alias.name for alias in node.names]))
    return found


def imported_modules(path: Path, module: str) -> Set[str]:
    """Every module name ``path`` may import (for ``from M import n``
    both ``M`` and ``M.n``)."""
    return {name for target, names in imports(path, module)
            for name in [target] + [f'{target}.{n}' for n in names]}


def _prefixes(name: str) -> List[str]:
    parts = name.split('.')
    return ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]


def dependencies(path: Path, module: str, modules: Set[str]) -> Set[str]:
    """The modules of ``modules`` that importing ``module`` runs first.

    ``import a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``, except the packages
    that hold ``module``: their ``__init__`` is already running when it is
    imported. ``from a.b import n`` runs ``a.b.n`` where that is a module;
    where ``n`` is a name defined in ``a.b`` itself, it needs ``a.b`` to
    have run, even when ``a.b`` holds ``module`` (a real cycle).
    """
    ancestors = set(_prefixes(module)[:-1])
    deps = set()
    for target, names in imports(path, module):
        deps |= {p for p in _prefixes(target) if p not in ancestors}
        for name in names:
            if f'{target}.{name}' in modules:
                deps.add(f'{target}.{name}')
            else:
                deps.add(target)
    return (deps & modules) - {module}


def import_graph(modules: Optional[Dict[str, Path]] = None
                 ) -> Dict[str, Set[str]]:
    """Package module -> the package modules it imports (at any depth of
    its code: a lazy import hides a cycle, it does not remove it)."""
    modules = package_modules() if modules is None else modules
    return {name: dependencies(path, name, set(modules))
            for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle of ``graph`` as a closed path, or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


# -- the checker itself -------------------------------------------------------
def test_cycle_finder_sees_a_lazy_import_cycle(tmp_path):
    """The graph code on a package of its own: a cycle closed by an import
    inside a function is found; the same package without it is acyclic."""
    pkg = tmp_path / 'pkg'
    (pkg / 'sub').mkdir(parents=True)
    (pkg / '__init__.py').write_text('from . import a\n')
    (pkg / 'a.py').write_text('from .sub import b\n')
    (pkg / 'sub' / '__init__.py').write_text('')
    (pkg / 'sub' / 'b.py').write_text(
        'def late():\n    from ..a import x\n')
    modules = {'pkg': pkg / '__init__.py', 'pkg.a': pkg / 'a.py',
               'pkg.sub': pkg / 'sub' / '__init__.py',
               'pkg.sub.b': pkg / 'sub' / 'b.py'}
    graph = import_graph(modules)
    assert graph['pkg'] == {'pkg.a'}
    # (pkg itself holds a: already running, no edge)
    assert graph['pkg.a'] == {'pkg.sub', 'pkg.sub.b'}
    assert graph['pkg.sub.b'] == {'pkg.a'}
    assert find_cycle(graph) == ['pkg.a', 'pkg.sub.b', 'pkg.a']
    # a name read from the package that holds the module: a cycle too
    (pkg / 'sub' / 'b.py').write_text('from .. import VALUE\n')
    assert find_cycle(import_graph(modules)) == [
        'pkg', 'pkg.a', 'pkg.sub.b', 'pkg']
    (pkg / 'sub' / 'b.py').write_text('x = 1\n')
    assert find_cycle(import_graph(modules)) is None


# -- the package --------------------------------------------------------------
def test_package_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert 'mmtranscnn.models.presets' in graph
    # the edges the presets exist for: model and converter read them
    assert 'mmtranscnn.models.presets' in graph['mmtranscnn.models.transcnn']
    assert 'mmtranscnn.models.presets' in graph['mmtranscnn.models.released']
    assert graph['mmtranscnn.models.presets'] == set()
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_nothing_in_the_package_imports_from_tools():
    tool_modules = {p.stem for p in TOOLS.rglob('*.py')} | {'tools'}
    for name, path in package_modules().items():
        for target in imported_modules(path, name):
            top = target.split('.')[0]
            assert top != 'tools' and top not in tool_modules, \
                f'{name} imports {target} from tools/'


# What only a benchmark harness does: describe the CPU and oneDNN's ISA,
# read and reset the process's memory high-water mark.
HARNESS_MARKS = ('/proc/cpuinfo', 'ONEDNN_VERBOSE', 'onednn_verbose',
                 'clear_refs', 'VmHWM', 'lscpu')


def test_the_benchmark_harness_lives_under_tools():
    harness = TOOLS / 'analysis_tools' / 'speed_harness.py'
    text = harness.read_text()
    assert all(mark in text for mark in HARNESS_MARKS)  # the marks are apt
    for name, path in package_modules().items():
        text = path.read_text()
        found = [mark for mark in HARNESS_MARKS if mark in text]
        assert not found, f'{name} holds benchmark harness code: {found}'
    assert not (PACKAGE / 'analysis' / 'speed.py').exists()


def test_the_model_makes_no_process_wide_malloc_setting():
    """glibc's mallopt changes the whole process: the training entry
    point's glue (engine.cpu_memory) makes it, never the model."""
    for name, path in package_modules().items():
        names = imported_modules(path, name)
        text = path.read_text()
        if name.startswith('mmtranscnn.models'):
            assert 'ctypes' not in names and 'mallopt' not in text, name
    from mmtranscnn.engine import cpu_memory
    from mmtranscnn.models import fastpath
    assert not hasattr(fastpath, 'keep_freed_memory')
    assert callable(cpu_memory.keep_freed_memory)


# -- importing the package ----------------------------------------------------
STATE = r'''
import sys, torch
from mmtranscnn.utils.torch_compat import (get_autocast_dtype,
                                          is_autocast_enabled)

def state():
    return (sorted(map(repr, torch.serialization.get_safe_globals())),
            is_autocast_enabled('cpu'), repr(get_autocast_dtype('cpu')))

# a dtype other than the default: an import that entered CPU autocast, or
# set its dtype, shows
torch.autocast('cpu', dtype=torch.float16, enabled=False).__enter__()
before = state()
import mmtranscnn  # noqa: F401
import mmtranscnn.models  # noqa: F401
after = state()
assert 'mmtranscnn.models.transcnn' in sys.modules
print(before == after)
print(before)
print(after)
'''


def test_import_leaves_safe_globals_and_autocast_as_they_were():
    """In a fresh interpreter (nothing imported yet), ``import mmtranscnn``
    leaves torch's global safe-globals list and the CPU autocast state
    (on/off and dtype) exactly as it found them."""
    out = subprocess.run([sys.executable, '-c', STATE], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    same, before, after = out.stdout.strip().splitlines()[-3:]
    assert same == 'True', f'before {before}, after {after}'
