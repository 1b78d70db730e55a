"""The documentation site: it builds under ``mkdocs build --strict``, its API reference lists
every public name, and the code of its pages runs.

The pages' code runs by one convention, which the pages are written to: in each ``docs/*.md``
page (not ``docs/api/``), every fenced block whose info string is exactly ``python`` is run, in
the page's order, in one namespace per page (``__name__ == "__docs__"``), from a fresh empty
working directory, with ``$JAXCNN_DATA`` pointing at ``../shared/data`` beside the checkout when
that exists. A block whose previous non-blank line is ``<!-- skip-run -->`` is not run (for
multi-process or real-data-only snippets), nor is any other info string (``bash``, ``console``,
``text``, ``pycon``...). A failure names the page, the block's first line and the traceback,
whose line numbers are the page's own.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import pkgutil
import subprocess
import sys
import traceback
import zlib
from pathlib import Path
from types import ModuleType

import pytest

import jaxcnn

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
SKIP_MARKER = "<!-- skip-run -->"


# --- the build, shared by the tests that read it -----------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f'the docs extra is not installed (no {module}): pip install -e ".[docs]"')
    site_dir = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return site_dir


def test_mkdocs_build_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "objects.inv").is_file()


# --- the API reference against the package's public names --------------------------------------

def read_inventory(path: Path) -> dict[str, int]:
    """A Sphinx ``objects.inv`` (version 2) as {name: priority}.

    Four plain header lines, then zlib-compressed lines ``name domain:role priority uri
    dispname``. mkdocstrings writes priority 1 for an object rendered on a page and 2 for a
    name that only points at one rendered elsewhere (an import the module does not export).
    """
    header, _, body = path.read_bytes().partition(b"# The remainder of this file is compressed")
    assert header.startswith(b"# Sphinx inventory version 2"), header[:60]
    body = body.split(b"\n", 1)[1]
    entries = {}
    for line in zlib.decompress(body).decode().splitlines():
        name, _role, priority, _rest = line.split(" ", 3)
        entries[name] = min(int(priority), entries.get(name, 2))
    return entries


def public_modules() -> list[ModuleType]:
    """jaxcnn and every module under it whose dotted name has no part starting with ``_``."""
    names = [m.name for m in pkgutil.walk_packages(jaxcnn.__path__, "jaxcnn.")
             if not any(part.startswith("_") for part in m.name.split("."))]
    return [jaxcnn, *(importlib.import_module(n) for n in sorted(names))]


def public_names(module: ModuleType) -> set[str]:
    """``__all__`` where the module has one, else the names it defines (``def``, ``class`` or
    assignment at top level; not imports) that do not start with ``_``."""
    if hasattr(module, "__all__"):
        return set(module.__all__)
    names = set()
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def canonical_name(obj: object) -> str | None:
    if isinstance(obj, ModuleType):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def undocumented(rendered: set[str]) -> list[str]:
    """Every public module and public name the reference does not render.

    ``module.name`` must be rendered, except for a name the module resolves lazily (its
    ``__getattr__``, as ``jaxcnn.load``), which is rendered where it lives."""
    missing = []
    for module in public_modules():
        if module.__name__ not in rendered:
            missing.append(module.__name__)
        for name in sorted(public_names(module)):
            full = f"{module.__name__}.{name}"
            if full in rendered:
                continue
            if name not in vars(module) and canonical_name(getattr(module, name)) in rendered:
                continue
            missing.append(full)
    return missing


def test_api_reference_lists_every_public_name(site: Path) -> None:
    rendered = {name for name, prio in read_inventory(site / "objects.inv").items() if prio == 1}
    missing = undocumented(rendered)
    assert not missing, (f"{len(missing)} public names are not in the API reference "
                         f"(docs/api/*.md):\n" + "\n".join(missing))


# --- the pages' code ---------------------------------------------------------------------------

def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ``python`` blocks of a Markdown page to run: (line of the opening fence, 1-based;
    the code). Fences may be indented (inside an admonition); the code is dedented to match."""
    blocks = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith("```"):
            i += 1
            continue
        indent = len(lines[i]) - len(stripped)
        fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
        info = stripped[len(fence):].strip()
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            i += 1
        body = [line[indent:] for line in lines[start + 1:i]]
        i += 1
        previous = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        if info == "python" and previous != SKIP_MARKER:
            blocks.append((start + 1, "\n".join(body)))
    return blocks


PAGES = sorted(p.name for p in DOCS.glob("*.md"))


@pytest.mark.parametrize("page", PAGES)
def test_docs_code_blocks_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    if not blocks:
        pytest.skip(f"docs/{page} has no python blocks to run")
    monkeypatch.chdir(tmp_path)
    if SHARED_DATA.is_dir():
        monkeypatch.setenv("JAXCNN_DATA", str(SHARED_DATA.resolve()))
    filename = str(path)  # so tracebacks show the page's lines, at the page's line numbers
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for line, code in blocks:
        # The fence is at `line`, so the code starts on the next one.
        compiled = compile("\n" * line + code, filename, "exec")
        try:
            exec(compiled, namespace)
        except Exception:
            pytest.fail(f"docs/{page}: the python block at line {line} failed:\n"
                        f"{traceback.format_exc()}", pytrace=False)
