"""README and docs/: every command in their code blocks runs as written.

Offline and fast: nothing is trained, downloaded or run. What is checked:

* every repository path the pages mention (``configs/...py``, ``tools/...``,
  ``scripts/...``, ``mmtranscnn/...py``, ...) and every relative link exists;
* every ``python tools/X.py ...`` (and ``demo/``) command line is accepted by
  that tool's own argparse parser, flags, choices and positionals included;
  ``bash tools/dist_train.sh`` and the other launch wrappers are checked as
  the ``tools/train.py`` / ``tools/test.py`` command they expand to;
* ``mim train mmtranscnn NAME`` names a shipped config;
* every ``MMTRANSCNN_*`` environment variable named is read somewhere;
* README starts with exactly the set-up and the test command, and ``.ci/run``
  runs that same test command;
* README stays short, and no page carries dated run notes or target
  bookkeeping (history lives in git).
"""
import argparse
import contextlib
import io
import os
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from tool_modules import load_tool

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
PAGES = [README] + sorted((REPO / 'docs').rglob('*.md'))

SETUP_COMMAND = 'bash scripts/setup.sh'
TEST_COMMAND = 'bash scripts/test.sh'
README_MAX_LINES = 250
# Run notes do not belong in user documentation: dates, "working copy",
# target lists. The same expression as the repository's pre-stop hook.
DATED = re.compile(r'20[0-9]{2}-[0-9]{2}-[0-9]{2}|working copy|minutes '
                   r'earlier|missed|the issue')
SHELL_LANGS = ('bash', 'sh', 'shell', 'console')
# Repository paths as pages write them; output files under work_dirs/ or
# data/ are not expected to exist.
REPO_PATH = re.compile(
    r'(?<![\w./-])((?:configs|tools|scripts|demo|requirements|mmtranscnn|'
    r'tests|docs)/[\w./-]*\.(?:py|sh|txt|md|json|png|yml|cff))\b')
LINK = re.compile(r'\]\(([^)\s#]*)(?:#([^)\s]*))?\)')
ENV_VAR = re.compile(r'\bMMTRANSCNN_[A-Z0-9_]+\b')
# Shell launchers and the python command each one runs:
# name -> (positional args it needs, python tool, how its args map).
WRAPPERS = {
    'tools/dist_train.sh':
    (2, 'tools/train.py', lambda a: [a[0], '--launcher', 'pytorch', *a[2:]]),
    'tools/dist_test.sh':
    (3, 'tools/test.py',
     lambda a: [a[0], a[1], '--launcher', 'pytorch', *a[3:]]),
    'tools/slurm_train.sh':
    (4, 'tools/train.py',
     lambda a: [a[2], f'--work-dir={a[3]}', '--launcher=slurm', *a[4:]]),
    'tools/slurm_test.sh':
    (4, 'tools/test.py', lambda a: [a[2], a[3], '--launcher=slurm', *a[4:]]),
}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def code_blocks(text: str) -> Iterator[Tuple[str, str]]:
    """(language, body) of every fenced code block."""
    for match in re.finditer(r'^```([\w+-]*)[^\n]*\n(.*?)^```', text,
                             re.M | re.S):
        yield match.group(1).lower(), match.group(2)


def shell_commands(body: str) -> Iterator[List[str]]:
    """Simple commands of a shell block as word lists (env prefixes off)."""
    body = re.sub(r'\\\n', ' ', body)
    for line in body.splitlines():
        line = re.sub(r'^\s*\$ ', '', line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=';&|')
        lexer.whitespace_split = True
        lexer.commenters = '#'
        words: List[str] = []
        for token in list(lexer) + [';']:
            if token and set(token) <= set(';&|'):
                while words and re.match(r'^[A-Za-z_]\w*=', words[0]):
                    words.pop(0)  # FOO=bar cmd ...
                if words:
                    yield words
                words = []
            else:
                words.append(token)


def page_commands() -> List[Tuple[str, List[str]]]:
    """(page, words) of every shell command in README and docs/."""
    found = []
    for page in PAGES:
        for lang, body in code_blocks(page.read_text()):
            if lang in SHELL_LANGS:
                found.extend((rel(page), cmd) for cmd in shell_commands(body))
    return found


COMMANDS = page_commands()


def python_invocations() -> Dict[str, List[Tuple[str, List[str]]]]:
    """tool path -> [(where, argv)] for every python tool a page runs."""
    calls: Dict[str, List[Tuple[str, List[str]]]] = {}
    for page, words in COMMANDS:
        head = os.path.basename(words[0])
        if head in ('bash', 'sh'):
            words = words[1:]
        if words and words[0].lstrip('./') in WRAPPERS:
            script = words[0].lstrip('./')
            needed, tool, expand = WRAPPERS[script]
            args = words[1:]
            assert len(args) >= needed, \
                f'{page}: `{shlex.join(words)}` gives {script} ' \
                f'{len(args)} arguments, it needs {needed}'
            calls.setdefault(tool, []).append(
                (f'{page}: {shlex.join(words)}', expand(args)))
        elif re.match(r'^python[\d.]*$', head) and len(words) > 1 and \
                words[1] != '-m' and words[1].endswith('.py'):
            calls.setdefault(words[1].lstrip('./'), []).append(
                (f'{page}: {shlex.join(words)}', words[2:]))
    return calls


CALLS = python_invocations()


class _Captured(Exception):

    def __init__(self, parser):
        super().__init__('parser captured')
        self.parser = parser


@lru_cache(maxsize=None)
def tool_parser(tool: str) -> argparse.ArgumentParser:
    """The argparse parser of a tool script, without running the tool.

    The script is imported as a module; its ``parse_args`` (or ``main``) is
    called with parsing intercepted, so only the parser is built.
    """
    module = load_tool(tool, 'docs_tool_' + re.sub(r'\W', '_', tool),
                       tool_dir_on_path=True)  # tools that import a sibling
    entry = getattr(module, 'parse_args', None) or getattr(module, 'main')

    def capture(parser, *args, **kwargs):
        raise _Captured(parser)

    original = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = capture
    try:
        entry([]) if entry.__name__ == 'parse_args' else entry()
    except _Captured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise AssertionError(f'{tool}: {entry.__name__}() built no parser')


def test_readme_starts_with_the_setup_and_the_test_command():
    text = README.read_text()
    first_heading = re.search(r'^#{2,} ', text, re.M)
    first_block = re.search(r'^```', text, re.M)
    assert first_block and (not first_heading or
                            first_block.start() < first_heading.start()), \
        'README must open with its two commands, before any section'
    lang, body = next(code_blocks(text))
    assert lang in SHELL_LANGS
    commands = [shlex.join(words) for words in shell_commands(body)]
    assert commands == [SETUP_COMMAND, TEST_COMMAND], commands


def test_ci_runs_the_readme_test_command():
    ci = (REPO / '.ci' / 'run').read_text()
    commands = [shlex.join(words) for words in shell_commands(ci)]
    assert commands[-1] == TEST_COMMAND, commands


def test_readme_is_short():
    lines = README.read_text().count('\n')
    assert lines <= README_MAX_LINES, f'README.md has {lines} lines'


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_no_dated_run_notes(page):
    hits = [f'{rel(page)}:{i}: {line.strip()}'
            for i, line in enumerate(page.read_text().splitlines(), 1)
            if DATED.search(line)]
    assert not hits, '\n'.join(hits)


def anchors(page: Path) -> set:
    """GitHub's anchors for the headings of a markdown page."""
    text = re.sub(r'^```.*?^```', '', page.read_text(), flags=re.M | re.S)
    return {
        re.sub(r'[^\w\- ]', '', title.strip().lower()).replace(' ', '-')
        for title in re.findall(r'^#+ (.*)$', text, re.M)
    }


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_mentioned_paths_and_links_exist(page):
    text = page.read_text()
    missing = [p for p in REPO_PATH.findall(text) if not (REPO / p).exists()]
    for target, fragment in LINK.findall(text):
        if re.match(r'^[a-z]+:', target):  # https:, mailto:
            continue
        path = (page.parent / target) if target else page
        if not path.exists():
            missing.append(f'link {target}')
        elif fragment and path.suffix == '.md' and \
                fragment not in anchors(path):
            missing.append(f'link {target}#{fragment} (no such heading)')
    assert not missing, f'{rel(page)} names what does not exist: {missing}'


def test_every_documented_command_names_existing_scripts():
    assert COMMANDS, 'no shell commands found in README or docs/'
    missing = []
    for page, words in COMMANDS:
        for word in words:
            if re.match(r'^\.?/?(tools|scripts|demo)/\S+\.(py|sh)$', word) \
                    and not (REPO / word.lstrip('./')).is_file():
                missing.append(f'{page}: {word}')
    assert not missing, missing


@pytest.mark.parametrize('tool', sorted(CALLS))
def test_documented_tool_arguments_parse(tool):
    assert (REPO / tool).is_file(), f'{tool} does not exist ({CALLS[tool]})'
    parser = tool_parser(tool)
    for where, argv in CALLS[tool]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                if exc.code:  # --help exits 0
                    pytest.fail(f'{where}\n{tool} rejects {argv}:\n'
                                f'{err.getvalue()}')


def test_mim_commands_name_shipped_configs():
    configs = {rel(p).split('/', 1)[1] for p in (REPO / 'configs').rglob('*.py')}
    names = {os.path.basename(c) for c in configs}
    bad = []
    for page, words in COMMANDS:
        if words[0] == 'mim' and len(words) > 3 and \
                words[1] in ('train', 'test') and words[2] == 'mmtranscnn':
            if words[3] not in configs and words[3] not in names:
                bad.append(f'{page}: {shlex.join(words)}')
    assert not bad, bad


def test_environment_variables_named_exist_in_the_code():
    code = ''.join(
        p.read_text(errors='ignore')
        for folder in ('mmtranscnn', 'tools', 'scripts')
        for p in (REPO / folder).rglob('*') if p.suffix in ('.py', '.sh'))
    unknown = sorted({
        name
        for page in PAGES for name in ENV_VAR.findall(page.read_text())
        if name not in code
    })
    assert not unknown, f'README/docs name variables nothing reads: {unknown}'
