"""The command line: experiment scripts' overrides and the ``jaxcnn`` console command.

Experiment scripts hand their config to :func:`run_main`, which applies ``--key value``
overrides (``--epochs 3 --lr 0.05 --runs-dir runs``; ``-`` and ``_`` alike; a bool field also
takes ``--normalize``/``--no-normalize``), or continues a run with ``--resume RUN_DIR``
(``--force`` to allow changing keys that would make the continuation meaningless). An unknown key
or a value of the wrong type prints the error with the list of valid keys and exits with 2.

``jaxcnn`` subcommands:

- ``jaxcnn run EXPERIMENT [overrides]``: EXPERIMENT is a script path (``experiments/x.py``) or a
  name looked up as ``experiments/<name>.py`` in the current folder, then among the built-in
  experiments installed with the package (``jaxcnn.experiments``); a script's ``get_model``,
  ``get_data`` and ``get_loss`` are handed to the runner;
- ``jaxcnn resume RUN_DIR [overrides] [--force]``: continue a run (a script's model, data and
  loss are rebuilt from the run folder's checked copy of it);
- ``jaxcnn runs [DIR]``: a table of the runs under DIR (default ``runs``);
- ``jaxcnn summary EXPERIMENT [overrides]``: the model table;
- ``jaxcnn list``: the experiments found;
- ``jaxcnn predict RUN_DIR FILE... [--top K] [--json] [--checkpoint best|last|NAME]
  [--explain OUT_DIR]``: classify image files with a trained run (:func:`jaxcnn.load`);
- ``jaxcnn export RUN_DIR OUT_FILE [--platforms cpu,cuda]``: the trained model as
  ``jax.export`` bytes (:func:`jaxcnn.export.export_model`).

Exit codes: 0 done, 1 a run failed (non-finite loss, unusable checkpoint or folder), 2 a bad
command line or config, 130/143 stopped by SIGINT/SIGTERM after a checkpoint.

argparse (the standard library) parses the subcommands; the overrides are checked by
:func:`jaxcnn.config.override`, the same code the Python API uses, so both refuse the same
things with the same message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxcnn import config as config_lib
from jaxcnn.errors import ConfigError, JaxcnnError, RunError
from jaxcnn.scripts import (
    experiment_dirs,
    find_experiments,
    load_experiment,
    resolve_experiment,
)

__all__ = ["find_experiments", "load_experiment", "main", "parse_overrides", "resolve_experiment",
           "run_main", "runs_table"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# Overrides


def parse_overrides(args: Sequence[str], config: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Split ``args`` into config overrides ``{key: raw string}`` and the runner's own options
    (``resume``: a folder or None, ``force``: bool, ``help``: bool).

    ``--key value``, ``--key=value``; for bool fields ``--key`` alone means true and
    ``--no-key`` false. Keys are checked against ``config``'s fields (ConfigError with the list
    of valid keys); the values are parsed later by :func:`jaxcnn.config.override`.
    """
    types_ = config_lib.field_types(type(config))
    valid = ", ".join(types_)
    overrides: dict[str, str] = {}
    options: dict[str, Any] = {"resume": None, "force": False, "help": False}
    i = 0
    args = list(args)
    while i < len(args):
        tok = args[i]
        i += 1
        if tok in ("-h", "--help"):
            options["help"] = True
            continue
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}: overrides are --key value pairs; "
                              f"valid keys are {valid}")
        name, eq, value = tok[2:].partition("=")
        key = name.replace("-", "_")
        if key == "force":
            options["force"] = True
            continue
        if key.startswith("no_") and key[3:] in types_ and types_[key[3:]] is bool and not eq:
            overrides[key[3:]] = "false"
            continue
        if key == "resume" or key in types_:
            if not eq:
                if i < len(args) and not args[i].startswith("--"):
                    value = args[i]
                    i += 1
                elif key in types_ and types_[key] is bool:
                    value = "true"
                else:
                    raise ConfigError(f"--{name} needs a value, e.g. --{name} VALUE; valid keys "
                                      f"are {valid}")
            if key == "resume":
                options["resume"] = value
            else:
                overrides[key] = value
            continue
        config_lib.override(config, {key: ""})  # raises the unknown-key error with suggestions
    return overrides, options


def _usage(config: Any, prog: str) -> str:
    lines = [f"usage: {prog} [--KEY VALUE ...] [--resume RUN_DIR [--force]]", "",
             "config keys (default for this experiment):"]
    for key, tp in config_lib.field_types(type(config)).items():
        value = getattr(config, key)
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
        lines.append(f"  --{key.replace('_', '-'):<26} {config_lib.type_name(tp):<16} {shown}")
    lines += ["", "  --resume RUN_DIR             continue the run in RUN_DIR (its config.json "
              "is the base)", "  --force                      allow changing keys that make a "
              "resumed run a different run"]
    return "\n".join(lines)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run_main(config: Any, argv: Sequence[str] | None = None, *, prog: str | None = None,
             model: Callable[[Any], Any] | None = None, data: Callable[[Any], Any] | None = None,
             loss: Callable[[Any], Any] | None = None) -> int:
    """Run ``config`` (an experiment script's ``get_config()``) with the overrides in ``argv``
    (default ``sys.argv[1:]``), or resume a run with ``--resume RUN_DIR``; returns the exit code.

    ``model``, ``data`` and ``loss`` are the script's ``get_model(config) -> Layer``,
    ``get_data(config) -> jaxcnn.data.Splits`` and ``get_loss(config) -> loss_fn``, each
    optional (see :func:`jaxcnn.experiment.run`).

    >>> raise SystemExit(run_main(get_config(), model=get_model))  # doctest: +SKIP
    """
    from jaxcnn import experiment

    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or Path(sys.argv[0]).name
    given = {"model": model, "data": data, "loss_fn": loss}
    try:
        overrides, options = parse_overrides(argv, config)
        if options["help"]:
            print(_usage(config, prog))
            return EXIT_OK
        if options["resume"] is not None:
            return _finish(lambda: experiment.resume(options["resume"], overrides=overrides,
                                                     force=options["force"], **given))
        if options["force"]:
            raise ConfigError("--force only applies with --resume RUN_DIR")
        cfg = config_lib.override(config, overrides)
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    return _finish(lambda: experiment.run(cfg, **given))


def _finish(job) -> int:
    from jaxcnn.experiment import RunInterrupted

    try:
        result = job()
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    except RunInterrupted as e:
        print(f"\n{e}", file=sys.stderr)  # names the exact resume command
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except JaxcnnError as e:
        _error(str(e))
        return EXIT_FAILED
    acc = result.test_accuracy
    done = "" if result.completed else " (stopped early; resume to continue)"
    if acc is not None:
        best = result.best_val_test_accuracy
        at_best = (f" test_accuracy_at_best_val={best:.4f} (epoch {result.best['epoch']})"
                   if best is not None else "")
        print(f"run {result.run_dir}: test_accuracy={acc:.4f}{at_best}{done}")
    else:
        print(f"run {result.run_dir}: done")
    return EXIT_OK


# ----------------------------------------------------------------------------------------------
# jaxcnn runs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def _acc(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"


def _duration(v: Any) -> str:
    if not isinstance(v, int | float):
        return "-"
    m, s = divmod(int(round(v)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{v:.1f}s"


def runs_table(directory: str | os.PathLike[str] = "runs") -> str:
    """A text table of the runs under ``directory``: experiment, start time, key hparams, the
    final test accuracy and the test accuracy at the best validation epoch, epochs
    done/planned, wall time and status, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        raise RunError(f"runs folder {root} does not exist; pass the folder your runs went to "
                       f"(--runs-dir)")
    rows = []
    for cfg_path in root.glob("**/config.json"):
        folder = cfg_path.parent
        cfg, status = _read_json(cfg_path), _read_json(folder / "run.json")
        if not cfg:
            continue
        final = status.get("final") or {}
        rows.append((status.get("start_time", ""), [
            str(folder.relative_to(root)) if folder != root else folder.name,
            str(cfg.get("experiment", "?")),
            status.get("start_time", "?").replace("T", " "),
            str(cfg.get("model", "-")), str(cfg.get("dataset", "-")),
            str(cfg.get("optimizer", "-")), str(cfg.get("lr", "-")),
            str(cfg.get("batch_size", "-")), str(cfg.get("seed", "-")),
            _acc(final.get("test_accuracy")), _acc((status.get("best") or {}).get("test_accuracy")),
            f"{status.get('epochs_done', 0)}/{status.get('epochs', cfg.get('epochs', '?'))}",
            _duration(status.get("wall_time_s")), str(status.get("status", "?"))]))
    head = ["run", "experiment", "start", "model", "dataset", "optimizer", "lr", "batch", "seed",
            "test acc", "test acc @ best val", "epochs", "wall time", "status"]
    if not rows:
        return f"no runs under {root}"
    body = [r for _, r in sorted(rows, key=lambda r: r[0])]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    right = {6, 7, 8, 9, 10, 11, 12}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


# ----------------------------------------------------------------------------------------------
# jaxcnn


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxcnn", description="Run, resume and compare jaxcnn "
                                "experiments.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run an experiment: jaxcnn run NAME|PATH [--key value ...]",
                       add_help=False)
    r.add_argument("experiment")
    r.add_argument("overrides", nargs=argparse.REMAINDER)
    s = sub.add_parser("resume", help="continue a run: jaxcnn resume RUN_DIR [--key value ...] "
                       "[--force]", add_help=False)
    s.add_argument("run_dir")
    s.add_argument("overrides", nargs=argparse.REMAINDER)
    t = sub.add_parser("runs", help="compare the runs under DIR (default: runs)")
    t.add_argument("dir", nargs="?", default="runs")
    m = sub.add_parser("summary", help="print an experiment's model table", add_help=False)
    m.add_argument("experiment")
    m.add_argument("overrides", nargs=argparse.REMAINDER)
    sub.add_parser("list", help="list the experiments found")
    q = sub.add_parser("predict", help="classify image files with a trained run: jaxcnn predict "
                       "RUN_DIR FILE... [--top K] [--json]")
    q.add_argument("run_dir")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("--top", type=int, default=3, help="how many classes to show per file")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.add_argument("--checkpoint", default="best", help="best (default), last or a name")
    e = sub.add_parser("export", help="write a trained run's model as jax.export bytes: jaxcnn "
                       "export RUN_DIR OUT_FILE [--platforms cpu,cuda]")
    e.add_argument("run_dir")
    e.add_argument("out_file")
    e.add_argument("--platforms", default="cpu", help="comma-separated: cpu, cuda, rocm, tpu")
    e.add_argument("--checkpoint", default="best", help="best (default), last or a name")
    q.add_argument("--explain", metavar="OUT_DIR", help="write a Grad-CAM overlay PNG per file "
                   "(saliency for a model without conv layers) into OUT_DIR")
    return p


def _export(args: argparse.Namespace) -> int:
    """``jaxcnn export``: the run's model, normalisation included, as ``jax.export`` bytes."""
    from jaxcnn import trained
    from jaxcnn.export import export_model

    model = trained.load(args.run_dir, checkpoint=args.checkpoint)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    try:
        blob = export_model(model.model, model.params, model.state,
                            input_shape=model.input_shape, mean=model.mean, std=model.std,
                            platforms=platforms)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    Path(args.out_file).write_bytes(blob)
    h, w, c = model.input_shape
    print(f"wrote {args.out_file} ({len(blob)} bytes): float32 images (batch, {h}, {w}, {c}) in "
          f"[0, 1] -> probabilities (batch, {len(model.class_names)}) of classes "
          f"{', '.join(model.class_names)}; platforms {', '.join(platforms)}")
    return EXIT_OK


_WRITTEN: set[Path] = set()


def _explain_png(model: Any, image: Any, file: Path, out_dir: Path) -> Path:
    """Write ``image``'s explanation for its predicted class over it, as a PNG in ``out_dir``
    (enlarged by a whole factor to about 224 pixels where the image is smaller)."""
    import numpy as np
    from PIL import Image

    from jaxcnn import explain, trained

    heat = trained.explain(model, image)
    shown = explain.overlay(np.asarray(image, np.float32) / 255.0, heat)
    target, n = out_dir / f"{file.stem}_explained.png", 1
    while target in _WRITTEN:  # two files of one name from different folders
        n += 1
        target = out_dir / f"{file.stem}_{n}_explained.png"
    _WRITTEN.add(target)
    picture = Image.fromarray(np.round(shown * 255).astype(np.uint8))
    scale = max(1, 224 // max(picture.size))  # small inputs (28x28) enlarged to be seen
    picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
                   ).save(target)
    return target


def _predict(args: argparse.Namespace) -> int:
    """``jaxcnn predict``: each file's top classes; unreadable files are reported by name
    after the others, and make the exit status 1."""
    import numpy as np

    from jaxcnn import trained

    if args.top < 1:
        raise ConfigError(f"--top must be >= 1, got {args.top}")
    model = trained.load(args.run_dir, checkpoint=args.checkpoint)
    images, files, failed = [], [], []
    for f in args.files:
        try:
            images.append(trained.read_image(f, model.input_shape))
            files.append(f)
        except JaxcnnError as e:
            failed.append(str(e))
    probs = model.predict(np.stack(images)) if images else np.zeros((0, 0))
    out_dir = Path(args.explain) if args.explain else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for f, image, p in zip(files, images, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:args.top]
        top = [{"label": int(i), "class": model.class_names[i], "probability": float(p[i])}
               for i in order]
        record: dict[str, Any] = {"file": f, **top[0], "top": top}
        if out_dir is not None:
            record["explain"] = str(_explain_png(model, image, Path(f), out_dir))
        if args.json:
            print(json.dumps(record))
        else:
            shown = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in top)
            print(f"{f}: {shown}" + (f" (explained in {record['explain']})"
                                     if out_dir is not None else ""))
    for message in failed:
        _error(message)
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """The ``jaxcnn`` console command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "runs":
            print(runs_table(args.dir))
            return EXIT_OK
        if args.command == "predict":
            return _predict(args)
        if args.command == "export":
            return _export(args)
        if args.command == "list":
            found = find_experiments()
            for name, path in found.items():
                print(f"{name:<20} {path}")
            if not found:
                looked = ", ".join(str(d) for d in experiment_dirs())
                print(f"no experiments found in {looked}", file=sys.stderr)
            return EXIT_OK
        if args.command == "resume":
            from jaxcnn import experiment

            base = experiment.load_run_config(args.run_dir)
            overrides, options = parse_overrides(args.overrides, base)
            if options["help"]:
                print(_usage(base, f"jaxcnn resume {args.run_dir}"))
                return EXIT_OK
            return _finish(lambda: experiment.resume(args.run_dir, overrides=overrides,
                                                     force=options["force"]))
        module = load_experiment(args.experiment)
        config = module.get_config()
        user_code = {key: getattr(module, f"get_{key}", None) for key in ("model", "data", "loss")}
        if args.command == "run":
            return run_main(config, args.overrides, prog=f"jaxcnn run {args.experiment}",
                            **user_code)
        overrides, options = parse_overrides(args.overrides, config)
        if options["help"]:
            print(_usage(config, f"jaxcnn summary {args.experiment}"))
            return EXIT_OK
        config = config_lib.override(config, overrides)
        from jaxcnn import experiment

        if isinstance(config, config_lib.FiltersConfig):
            from jaxcnn.filters_demo import filters_summary

            print(filters_summary(config))
        else:
            print(experiment.model_summary(config, model=user_code["model"],
                                           data=user_code["data"]))
        return EXIT_OK
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    except JaxcnnError as e:  # e.g. a LayerError: the model does not fit the dataset's images
        _error(str(e))
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
