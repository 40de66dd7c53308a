"""The documentation is true: its examples run, its reference is complete, it builds with -W.

How examples are marked (every ``.. code-block:: python`` in ``docs/*.rst`` must say which
kind it is, with a ``:class:`` option, or this test fails):

- ``:class: runnable``: a complete script, run as-is in a fresh interpreter (its own
  event loop) with ``-W error``, from an empty temporary directory, and it must exit 0
  within 60 s. It talks to the emulator (``aioamztoken.testing.AmazonEmulator``), never
  to Amazon, and prints no secret (no ``Atza|``/``Atzr|`` in its output).
- ``:class: runnable-pytest``: a test module, run with pytest (and pytest-asyncio) in its
  own temporary directory; every test in it must pass.
- ``:class: runnable-redis``: a script like ``runnable`` that also needs a Redis server:
  it reads its URL from ``REDIS_URL``, and the test starts a ``redis-server`` for it
  (skipped without the binary, like the other Redis tests).
- ``:class: fragment``: shown, not run: it needs a real Amazon account, or it is a piece
  of a larger program. Keep these few.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioamztoken
from aioamztoken import cli

from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
KINDS = {"runnable", "runnable-pytest", "runnable-redis", "fragment"}
EXAMPLE_TIMEOUT = 60.0
BUILD_TIMEOUT = 120.0  # the figures are drawn at every build

_DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)\.\. (?P<name>code-block|code|sourcecode)::[ \t]*(?P<lang>\S*)\s*$"
)
_OPTION = re.compile(r"^[ \t]+:(?P<name>[\w-]+):[ \t]*(?P<value>.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One ``code-block`` of a page: its language, ``:class:`` values and text."""

    page: str
    line: int
    lang: str
    classes: frozenset[str]
    code: str


@dataclasses.dataclass(frozen=True)
class Example:
    page: str
    line: int
    kinds: frozenset[str]
    code: str
    output: str | None = None
    """The text of a ``:class: output`` block right after the example: its exact stdout."""

    @property
    def where(self) -> str:
        return f"docs/{self.page}:{self.line}"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def code_blocks(path: Path) -> list[Block]:
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        i += 1
        if match is None:
            continue
        start, indent, classes = i, len(match["indent"]), set()
        while i < len(lines) and (option := _OPTION.match(lines[i])):
            if option["name"] == "class":
                classes.update(option["value"].split())
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            body.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        blocks.append(Block(path.name, start, match["lang"], frozenset(classes), code))
    return blocks


def python_examples() -> list[Example]:
    """Every Python code block of the docs, with the kinds its ``:class:`` option names."""
    examples = []
    for path in sorted(DOCS.glob("*.rst")):
        blocks = code_blocks(path)
        for n, block in enumerate(blocks):
            if block.lang not in ("python", "python3", "py"):
                continue
            after = blocks[n + 1] if n + 1 < len(blocks) else None
            output = after.code if after is not None and "output" in after.classes else None
            kinds = frozenset(block.classes & KINDS)
            examples.append(Example(block.page, block.line, kinds, block.code, output))
    return examples


EXAMPLES = python_examples()
RUNNABLE = [e for e in EXAMPLES if "runnable" in e.kinds]
RUNNABLE_PYTEST = [e for e in EXAMPLES if "runnable-pytest" in e.kinds]
RUNNABLE_REDIS = [e for e in EXAMPLES if "runnable-redis" in e.kinds]


def _env(home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIOAMZTOKEN_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)  # the checkout under test, whatever is installed
    if home is not None:
        # Nothing an example writes (default stores, keyring entries, lock files) may
        # land in the real user directories or keyring.
        env.update(
            HOME=str(home),
            XDG_DATA_HOME=str(home / "data"),
            XDG_CONFIG_HOME=str(home / "config"),
            XDG_CACHE_HOME=str(home / "cache"),
            PYTHON_KEYRING_BACKEND="tests._keyrings.FileKeyringForTests",
        )
    return env


def _run(args: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    home = cwd / "home"
    home.mkdir()
    return subprocess.run(
        args,
        cwd=cwd,
        env={**_env(home), **extra_env},
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )


def _assert_ran(example: Example, done: subprocess.CompletedProcess[str]) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{example.where} failed:\n{output}"
    assert "Atza|" not in output, f"{example.where} printed an access token"
    assert "Atzr|" not in output, f"{example.where} printed a refresh token"


# ---------------------------------------------------------------------- the examples


def test_every_python_block_says_whether_it_runs() -> None:
    unmarked = [e.where for e in EXAMPLES if len(e.kinds) != 1]
    assert not unmarked, f"add ':class: runnable' (or runnable-pytest, fragment): {unmarked}"


def test_most_examples_run() -> None:
    fragments = [e for e in EXAMPLES if "fragment" in e.kinds]
    assert len(RUNNABLE) + len(RUNNABLE_PYTEST) + len(RUNNABLE_REDIS) > 2 * len(fragments)


_AMAZON_URL = re.compile(r"https?://[\w.-]*amazon\.(?:com|co\.uk|co\.jp)\b")


def test_runnable_examples_never_reach_amazon() -> None:
    for example in RUNNABLE + RUNNABLE_PYTEST + RUNNABLE_REDIS:
        assert not _AMAZON_URL.search(example.code), f"{example.where} names an Amazon URL"
        assert "…" not in example.code, f"{example.where} has a placeholder"
        if "TokenManager(" in example.code:
            assert "token_url" in example.code, f"{example.where} would call Amazon"


def test_examples_fit_the_page() -> None:
    # Longer lines scroll sideways in the rendered page.
    long = [
        f"{e.where} (+{n})"
        for e in EXAMPLES
        for n, line in enumerate(e.code.splitlines(), 1)
        if len(line) > 88
    ]
    assert not long, f"lines over 88 characters: {long}"


@pytest.mark.parametrize("example", RUNNABLE, ids=[e.where for e in RUNNABLE])
def test_runnable_example(example: Example, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(example.code, encoding="utf-8")
    done = _run([sys.executable, "-W", "error", str(script)], tmp_path)
    _assert_ran(example, done)
    if example.output is not None:
        assert done.stdout == example.output, f"{example.where}: the output shown differs"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.redis
@pytest.mark.parametrize("example", RUNNABLE_REDIS, ids=[e.where for e in RUNNABLE_REDIS])
def test_runnable_redis_example(example: Example, tmp_path: Path, redis_url: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(example.code, encoding="utf-8")
    done = _run([sys.executable, "-W", "error", str(script)], tmp_path, REDIS_URL=redis_url)
    _assert_ran(example, done)


@pytest.mark.parametrize("example", RUNNABLE_PYTEST, ids=[e.where for e in RUNNABLE_PYTEST])
def test_runnable_pytest_example(example: Example, tmp_path: Path) -> None:
    pytest.importorskip("pytest_asyncio")
    ini = "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    (tmp_path / "pytest.ini").write_text(ini, encoding="utf-8")
    (tmp_path / "test_example.py").write_text(example.code, encoding="utf-8")
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"]
    done = _run(args, tmp_path)
    _assert_ran(example, done)
    assert " passed" in done.stdout, done.stdout
    assert "skipped" not in done.stdout, done.stdout


# ---------------------------------------------------------------------- the reference

_AUTODOC = re.compile(
    r"^\.\. (?:auto(?:class|function|exception|data|module)|py:data|py:function)::\s+([\w.]+)",
    re.M,
)


def documented_names() -> set[str]:
    return set(_AUTODOC.findall((DOCS / "api.rst").read_text(encoding="utf-8")))


def test_every_public_name_is_in_the_api_reference() -> None:
    documented = documented_names()
    missing = [n for n in aioamztoken.__all__ if f"aioamztoken.{n}" not in documented]
    assert not missing, f"add to docs/api.rst: {missing}"


@pytest.mark.parametrize("module", ["aioamztoken.stores", "aioamztoken.testing"])
def test_every_store_and_testing_name_is_in_the_api_reference(module: str) -> None:
    documented = documented_names()
    names = importlib.import_module(module).__all__
    # A store exported from the package itself is documented under that shorter name.
    missing = [
        n
        for n in names
        if f"{module}.{n}" not in documented and f"aioamztoken.{n}" not in documented
    ]
    assert not missing, f"add to docs/api.rst: {missing}"


def _public_classes() -> list[type]:
    classes = []
    for module in ("aioamztoken", "aioamztoken.stores", "aioamztoken.testing"):
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type) and not issubclass(obj, BaseException):
                classes.append(obj)
    return list(dict.fromkeys(classes))


@pytest.mark.parametrize("cls", _public_classes(), ids=lambda c: c.__qualname__)
def test_every_public_class_states_its_concurrency(cls: type) -> None:
    doc = cls.__doc__ or ""
    assert re.search(r"thread|event loop|immutable", doc, re.I), (
        f"{cls.__qualname__}'s docstring says nothing of tasks, threads or immutability"
    )


# ---------------------------------------------------------------------- the CLI page


def test_cli_page_lists_every_exit_code_with_its_meaning() -> None:
    page = (DOCS / "cli.rst").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^   \* - ``(\d+)``\n     - (.+)$", page, re.M))
    assert {int(code) for code in rows} == set(cli.EXIT_CODES)
    for code, meaning in cli.EXIT_CODES.items():
        assert _plain(rows[str(code)]) == _plain(meaning), code


def _plain(text: str) -> str:
    """Text without reST or shell quoting, so ``login`` and 'login' compare equal."""
    return re.sub(r"[`'\\]", "", text)


def test_cli_page_documents_every_command_and_variable() -> None:
    page = (DOCS / "cli.rst").read_text(encoding="utf-8")
    parser = cli._build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in commands:
        assert f"aioamztoken {command}" in page, command
    source = Path(cli.__file__).read_text(encoding="utf-8")
    for variable in set(re.findall(r"AIOAMZTOKEN_[A-Z_]+", source)):
        assert variable in page, variable


# ---------------------------------------------------------------------- the build


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    pytest.importorskip(
        "sphinx", reason="the docs extra is not installed: pip install -e '.[docs]'"
    )
    pytest.importorskip("furo", reason="the docs extra is not installed: pip install -e '.[docs]'")
    out = tmp_path / "html"
    args = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    args += ["-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    done = subprocess.run(
        args,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr

    # The pictures are in the pages, built here (docs/figures), none fetched from the network.
    images = {p.name for p in (out / "_images").iterdir()}
    assert {"lifetime.svg", "consent.svg", "waves.svg"} <= images, images
    assert any(name.startswith("graphviz-") and name.endswith(".svg") for name in images)
    for page in out.glob("*.html"):
        assert not re.search(r"""<(img|object)[^>]+(src|data)=["']?https?:""", page.read_text())

    objects = inventory_names(out / "objects.inv")
    missing = {f"aioamztoken.{n}" for n in aioamztoken.__all__} - objects
    assert not missing, f"not in the built reference: {sorted(missing)}"


def inventory_names(path: Path) -> set[str]:
    """The object names of a Sphinx ``objects.inv`` (version 2: four header lines, zlib)."""
    data = path.read_bytes()
    header_end = 0
    for _ in range(4):
        header_end = data.index(b"\n", header_end) + 1
    body = zlib.decompress(data[header_end:]).decode("utf-8")
    return {line.split(" ", 1)[0] for line in body.splitlines() if line}
