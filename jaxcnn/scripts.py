"""Experiment scripts and the user code they hold: finding a script by name, importing it,
naming where a model, dataset or loss came from, and the copy of the script a run folder keeps.

A name is looked up as ``./experiments/<name>.py``, then among the built-in experiments (the
``jaxcnn.experiments`` package): :func:`find_experiments`, :func:`resolve_experiment`,
:func:`load_experiment`.

An experiment script defines ``get_config()`` and may define ``get_model(config)``,
``get_data(config)`` and ``get_loss(config)``. A run records each such function by its source
(:func:`source_of`): ``"my_script.py:get_model"`` for a function of a script (the script is
copied into the run folder, :func:`copy_script`, and its sha256 recorded), ``"package.module:fn"``
for a function of an importable module, and ``"python:<name>"`` for an object that cannot be
found again (defined in a notebook, or a model object): such a run resumes only when it is
given again. :func:`resolve` finds a recorded source again; importing a script runs its code,
so a copy whose hash no longer matches is refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib
import importlib.resources
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from jaxcnn.errors import ConfigError, RunError

__all__ = [
    "SCRIPT_DIR", "SCRIPT_MODULE_PREFIX", "copy_script", "experiment_dirs", "find_experiments",
    "import_file", "import_script", "importing", "load_experiment", "resolve",
    "resolve_experiment", "sha256_file", "source_of",
]

#: The folder of a run folder that holds the copy of its experiment script.
SCRIPT_DIR = "script"
#: Experiment scripts are imported as modules named with this prefix and the file's stem.
SCRIPT_MODULE_PREFIX = "_jaxcnn_experiment_"
_IMPORTING: contextvars.ContextVar[Path | None] = contextvars.ContextVar("importing",
                                                                         default=None)


def importing() -> Path | None:
    """The script being imported by :func:`import_file` right now, if any (its top-level code
    runs then: a run started from there would start a run on every import)."""
    return _IMPORTING.get()


@contextlib.contextmanager
def _importing(path: Path) -> Iterator[None]:
    token = _IMPORTING.set(path)
    try:
        yield
    finally:
        _IMPORTING.reset(token)


def import_file(path: str | os.PathLike[str], *,
                search: tuple[str | os.PathLike[str], ...] = ()) -> ModuleType:
    """Import the Python file ``path`` as a module (named ``_jaxcnn_experiment_<stem>``),
    running its top-level code, with its folder (and the folders in ``search``) on
    ``sys.path`` as ``python path`` would have it, so it can import modules beside it;
    ConfigError if it cannot be imported."""
    path = Path(path)
    name = SCRIPT_MODULE_PREFIX + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"experiment script {path} cannot be imported")
    for folder in reversed((path.resolve().parent, *map(Path, search))):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so pickling and dataclasses in it find it again
    try:
        with _importing(path):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _script_file(module: ModuleType | None) -> Path | None:
    """The file of a script module (run as ``__main__`` or imported by :func:`import_file`)."""
    if module is None:
        return None
    name = module.__name__
    file = getattr(module, "__file__", None)
    if (name == "__main__" or name.startswith(SCRIPT_MODULE_PREFIX)) and file and \
            Path(file).is_file():
        return Path(file).resolve()
    return None


def source_of(obj: Any) -> tuple[str, Path | None]:
    """Where ``obj`` (a model, dataset or loss, or a function returning one) came from, and
    the script file to copy (None when there is none): ``("my_script.py:get_model", path)``,
    ``("jaxcnn.losses:mse", None)`` or ``("python:<name>", None)``."""
    name = getattr(obj, "__qualname__", None)
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    found = (name is not None and "<" not in name and module is not None
             and _attr(module, name) is obj)
    if not found and module is not None:  # e.g. get_model = lambda config: ...
        name = next((k for k, v in vars(module).items() if v is obj and not k.startswith("_")),
                    name)
        found = name is not None and _attr(module, name) is obj
    if found:
        script = _script_file(module)
        if script is not None:
            return f"{script.name}:{name}", script
        if module.__name__ != "__main__":
            return f"{module.__name__}:{name}", None
    label = name or type(obj).__name__
    return f"python:{label}", None


def _attr(module: ModuleType, qualname: str) -> Any:
    value: Any = module
    for part in qualname.split("."):
        value = getattr(value, part, None)
    return value


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_script(script: str | os.PathLike[str], run_dir: str | os.PathLike[str]
                ) -> dict[str, str]:
    """Copy ``script`` byte for byte to ``<run_dir>/script/<name>``; the entry ``run.json``
    keeps: the copy's path in the run folder, its sha256 and where it was copied from."""
    target = Path(run_dir) / SCRIPT_DIR / Path(script).name
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(script, target)
    return {"file": f"{SCRIPT_DIR}/{target.name}", "sha256": sha256_file(target),
            "origin": str(Path(script).resolve())}


def import_script(run_dir: str | os.PathLike[str], entry: dict[str, str]) -> ModuleType:
    """Import the copy of a run's script (``entry`` as :func:`copy_script` returned it) after
    checking that its sha256 still matches the one recorded when the run started."""
    copy = Path(run_dir) / entry["file"]
    if not copy.is_file():
        raise RunError(f"{copy} is missing: this run's model, data or loss come from that "
                       f"script; restore it, or resume from Python with model=, data= and "
                       f"loss_fn= given")
    actual = sha256_file(copy)
    if actual != entry["sha256"]:
        raise RunError(f"{copy} has sha256 {actual}, but the run recorded {entry['sha256']} "
                       f"when it started: the copy was changed, and resuming would run the "
                       f"changed code; restore the original, or start a new run")
    origin = Path(entry.get("origin", copy)).parent
    return import_file(copy, search=(origin,) if origin.is_dir() else ())


def resolve(source: str, *, module: ModuleType | None = None) -> Any:
    """The object a recorded ``source`` names: from the imported script ``module`` for
    ``"<script>.py:<name>"``, by import for ``"<module>:<name>"``; RunError for a
    ``"python:..."`` source, which only the user can give again."""
    where, _, name = source.partition(":")
    if where == "python" or not name:
        raise RunError(f"{source!r} was given as a Python object, which a run folder cannot "
                       f"rebuild; resume from Python and give it again (experiment.resume("
                       f"run_dir, model=..., data=..., loss_fn=...))")
    if where.endswith(".py"):
        if module is None:
            raise RunError(f"{source!r} comes from a script this run folder does not hold")
        target = module
    else:
        try:
            target = importlib.import_module(where)
        except ImportError as e:
            raise RunError(f"cannot import {where!r} for {source!r} ({e})") from None
    value = _attr(target, name)
    if value is None:
        raise RunError(f"{source!r}: {where} has no {name}")
    return value


# ----------------------------------------------------------------------------------------------
# Finding experiments


def _builtin_dir() -> Path | None:
    """The folder of the built-in experiments: the ``jaxcnn.experiments`` package, which is the
    repo's ``experiments/`` folder in a source checkout or editable install and a copy in
    site-packages after a plain ``pip install``; None when it cannot be found."""
    try:
        root = importlib.resources.files("jaxcnn.experiments")
    except (ImportError, TypeError):
        return None
    if isinstance(root, Path):
        return root
    try:  # another kind of resource container: fall back to the package's own file
        import jaxcnn.experiments as builtin
    except ImportError:
        return None
    file = getattr(builtin, "__file__", None)
    return Path(file).parent if file else None


def experiment_dirs() -> list[Path]:
    """Where experiment names are looked up, in order: ``./experiments``, then the built-ins."""
    dirs = [Path.cwd() / "experiments"]
    builtin = _builtin_dir()
    if builtin is not None and builtin.resolve() != dirs[0].resolve():
        dirs.append(builtin)
    return dirs


def _scripts(folder: Path) -> list[Path]:
    # Files starting with "_" (``__init__.py``, helpers) are not experiments.
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.glob("*.py")) if not p.name.startswith("_") and p.is_file()]


def find_experiments() -> dict[str, Path]:
    """``{name: script}`` of the experiment scripts in ``./experiments`` and the built-in ones
    (package ``jaxcnn.experiments``); a script in the current folder's wins over a built-in."""
    found: dict[str, Path] = {}
    for folder in experiment_dirs():
        for p in _scripts(folder):
            found.setdefault(p.stem, p)
    return found


def resolve_experiment(spec: str) -> Path:
    """The script of experiment ``spec``: a path to a ``.py`` file, or a name looked up as
    ``./experiments/<name>.py``, then among the built-in experiments (``jaxcnn list``)."""
    path = Path(spec)
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        if path.is_file():
            return path
        raise ConfigError(f"experiment script {spec} does not exist; pass a path to an "
                          f"experiment .py file or a name from: "
                          f"{', '.join(find_experiments()) or 'none found'}")
    if not spec.startswith("_"):
        for folder in experiment_dirs():
            candidate = folder / f"{spec}.py"
            if candidate.is_file():
                return candidate
    names = ", ".join(find_experiments()) or "none found"
    looked = ", ".join(str(d) for d in experiment_dirs())
    raise ConfigError(f"experiment {spec!r} is not in {looked}; valid names are {names}, or "
                      f"pass a path to a script")


def load_experiment(spec: str) -> ModuleType:
    """Import experiment ``spec`` (see :func:`resolve_experiment`); it must define
    ``get_config()``."""
    path = resolve_experiment(spec)
    module = import_file(path)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"experiment script {path} has no get_config() function; define one "
                          f"that returns a jaxcnn.config.Config")
    return module
