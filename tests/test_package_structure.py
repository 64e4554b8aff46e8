"""The package is the plugin: how ``mmtranscnn/`` is put together.

* The modules of the package import each other without a cycle (every
  import counts, also those inside functions: a lazy import hides a cycle,
  it does not remove it).
* Nothing in the package imports from ``tools/``, and the benchmark harness
  (CPU and oneDNN description, memory high-water marks) lives under
  ``tools/analysis_tools``, not in the package.
* The model files are plain: nothing CPU-specific (no oneDNN kernels,
  layouts, timing or threads) and no process-wide malloc setting.
* ``import mmtranscnn`` changes no process-wide state: torch's safe
  globals, CPU autocast and glibc's malloc settings stay as they were.
"""
import ast
import json
import os
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
        if not name.startswith('mmtranscnn.models'):
            continue
        names = imported_modules(path, name)
        assert 'ctypes' not in names and 'mallopt' not in path.read_text(), \
            name
        assert not any(n.startswith('mmtranscnn.engine') for n in names), \
            f'{name} imports the engine'
    assert 'mallopt' in (PACKAGE / 'engine' / 'cpu_memory.py').read_text()


#: The files that define the network, and what of the package they may
#: use besides each other: the registry, the weight loader, the traced
#: check and the layers of mmtranscnn.ops.
MODEL_FILES = ('hmhsa', 'blocks', 'transcnn', 'released_blocks', 'presets',
               'grids', 'memory')
MODEL_MAY_USE = ('mmtranscnn.registry', 'mmtranscnn.utils',
                 'mmtranscnn.utils.tracing',
                 'mmtranscnn.models.pretrained', 'mmtranscnn.ops',
                 'mmtranscnn.ops.attention')
#: What is CPU-specific: oneDNN's own kernels (torch.ops.mkldnn), the
#: CPU's ISA, timing, threads and locks, process-wide settings.
CPU_SPECIFIC_IMPORTS = ('ctypes', 'threading', 'time', 'torch.backends',
                        'torch._C')
CPU_SPECIFIC_TEXT = ('mkldnn', 'torch.ops.', 'perf_counter',
                     'get_cpu_capability')


def test_the_model_files_hold_nothing_cpu_specific():
    """The network is built from torch and mmcv layers alone, and from the
    layers of ``mmtranscnn.ops`` (each a torch layer with a kernel of its
    own for one kind of device, kept outside the model files): the model
    files import nothing CPU-specific, call no oneDNN kernel and time
    nothing, and use no module of the package but each other and
    ``MODEL_MAY_USE``."""
    modules = package_modules()
    allowed = {f'mmtranscnn.models.{m}' for m in MODEL_FILES}
    allowed |= set(MODEL_MAY_USE)
    for stem in MODEL_FILES:
        name = f'mmtranscnn.models.{stem}'
        path = modules[name]
        imported = {p for n in imported_modules(path, name)
                    for p in _prefixes(n)}
        found = sorted(set(CPU_SPECIFIC_IMPORTS) & imported)
        assert not found, f'{name} imports {found}'
        found = sorted(dependencies(path, name, set(modules)) - allowed)
        assert not found, f'{name} uses {found}'
        text = path.read_text().lower()
        found = [mark for mark in CPU_SPECIFIC_TEXT if mark in text]
        assert not found, f'{name} mentions {found}'


# -- importing the package ----------------------------------------------------
STATE = r'''
import ctypes, ctypes.util, json, sys
import torch

assert not any(m.startswith('mmtranscnn') for m in sys.modules)

def autocast_state():
    return torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu')

def entries():
    return list(torch.serialization.get_safe_globals())

def mmap_blocks():
    """Blocks glibc's malloc serves by mmap (None without glibc)."""
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    if not hasattr(libc, 'gnu_get_libc_version'):
        return None
    wide = hasattr(libc, 'mallinfo2')  # glibc >= 2.33; before, ints
    field = ctypes.c_size_t if wide else ctypes.c_int

    class Mallinfo(ctypes.Structure):
        _fields_ = [(f'f{i}', field) for i in range(10)]

    info = libc.mallinfo2 if wide else libc.mallinfo
    info.restype = Mallinfo
    return info().f3  # hblks

def foreign(added):
    """The entries not defined by torch itself (torch registers its own
    classes when a submodule of it is first imported, e.g. DTensor's)."""
    def module(entry):
        obj = entry[0] if isinstance(entry, tuple) else entry
        return getattr(obj, '__module__', None) or ''
    return sorted(repr(e) for e in added
                  if module(e).split('.')[0] != 'torch')

# a dtype other than the default: an import that entered CPU autocast, or
# set its dtype, shows
torch.autocast('cpu', dtype=torch.float16, enabled=False).__enter__()
before, autocast_before = entries(), autocast_state()
import mmtranscnn  # noqa: F401
import mmtranscnn.analysis  # noqa: F401
import mmtranscnn.engine  # noqa: F401
import mmtranscnn.models  # noqa: F401
after, autocast_after = entries(), autocast_state()
assert 'mmtranscnn.models.transcnn' in sys.modules
ids_before, ids_after = {id(e) for e in before}, {id(e) for e in after}
# malloc as glibc sets it up: a 64 MB block is a fresh mmap, not heap
# memory kept by mmtranscnn.engine.cpu_memory.keep_freed_memory
blocks = mmap_blocks()
t = torch.empty(16 * 2**20)
print(json.dumps(dict(
    removed=[repr(e) for e in before if id(e) not in ids_after],
    added=foreign([e for e in after if id(e) not in ids_before]),
    autocast=[repr(autocast_before), repr(autocast_after)],
    malloc_kept=blocks is not None and mmap_blocks() == blocks)))
'''


def test_import_leaves_safe_globals_autocast_and_malloc_as_they_were():
    """In a fresh interpreter (nothing of mmtranscnn imported yet),
    importing the package, its models, engine and analysis removes nothing
    from torch's global safe-globals list and adds nothing of its own (only
    torch's classes that its own submodules register on first import),
    leaves the CPU autocast state (on/off and dtype) as it found it, and
    glibc's malloc still maps a big block afresh (nothing set it to keep
    freed memory)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(('MALLOC_', 'GLIBC_TUNABLES', 'LD_PRELOAD'))}
    out = subprocess.run([sys.executable, '-c', STATE], capture_output=True,
                         text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got['removed'] == [] and got['added'] == [], got
    assert got['autocast'][0] == got['autocast'][1], got['autocast']
    assert not got['malloc_kept'], 'importing the package changed malloc'
