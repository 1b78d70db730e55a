"""What a run trains: its model, loss and prepared splits, from the config or the user's code.

:func:`build` turns a :class:`jaxcnn.config.Config` and the user's own ``model``, ``data`` and
``loss_fn`` (each the object itself or a function of the config, see
:func:`jaxcnn.experiment.run`) into :class:`Components`: the layer, the loss, the train,
validation and test splits (the validation split held out of the training set, every split
normalised by the training split's per-channel statistics) and where the user's own parts came
from (:func:`jaxcnn.scripts.source_of`). The number of classes and the input shape come from
the data. Everything that cannot train is refused here, before a run folder is made.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import config as config_lib
from jaxcnn import data as data_lib
from jaxcnn import registry, runs, scripts
from jaxcnn.config import Config
from jaxcnn.errors import ConfigError, RunError
from jaxcnn.layers import Layer
from jaxcnn.summarize import summary

__all__ = ["Components", "DataSpec", "LossSpec", "ModelSpec", "build", "describe",
           "is_config_function", "model_summary", "user_code"]

ModelSpec = Layer | Callable[[Config], Layer] | None
DataSpec = data_lib.Splits | Callable[[Config], data_lib.Splits] | None
LossSpec = Callable[..., Any] | None



@dataclass
class Components:
    """A run's model, loss and prepared splits, and where the user's own came from."""

    model: Layer
    loss_fn: Callable[..., Any]
    train: data_lib.Split
    val: data_lib.Split | None
    test: data_lib.Split
    test_raw: np.ndarray  # the test images as loaded, for TensorBoard
    class_names: list[str]
    normalization: dict[str, list[float]] | None
    sources: dict[str, str]  # config field -> source, for what user code gave
    script: Path | None
    augment: Callable[..., Any] | None = None
    train_raw: np.ndarray | None = None  # the first training images as loaded, to show


def is_config_function(loss: Callable[..., Any]) -> bool:
    """Whether ``loss`` is a function of the config, ``get_loss(config)`` (one positional
    parameter), rather than a loss ``(logits, labels, ...)`` (two or more)."""
    try:
        params = inspect.signature(loss).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) == 1


def _check_fits(layer: Layer, loss: Callable[..., Any], splits: data_lib.Splits,
                names: Any, sources: dict[str, str], aug: Callable[..., Any] | None) -> None:
    """Refuse, before anything trains, data whose labels the model's outputs cannot hold,
    class names that do not match them, and a loss that gives no scalar on the model's outputs
    (traced on two examples, nothing computed)."""
    from jaxcnn import steps

    where = " and ".join(f"{k} {v}" for k, v in sources.items()) or "the config"
    x = splits.train.images
    out = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, train=False)[0],
                         *jax.eval_shape(lambda k: layer.init(k, (None, *x.shape[1:]))[1:],
                                         jax.random.key(0)),
                         jax.ShapeDtypeStruct((2, *x.shape[1:]), np.float32))
    for split_name, split in (("train", splits.train), ("test", splits.test)):
        try:
            steps.check_class_labels("data", split_name, split.labels, out.shape)
        except ValueError as e:
            raise ConfigError(f"{e} (from {where})") from None
    if names and len(out.shape) == 2 and len(names) != out.shape[-1]:
        raise ConfigError(f"data: {len(names)} class names for a model with {out.shape[-1]} "
                          f"outputs (from {where}); give one name per output")
    labels = jax.ShapeDtypeStruct(np.shape(splits.train.labels[:2]),
                                  np.asarray(splits.train.labels[:2]).dtype)
    if aug is not None:  # the labels the loss will see (soft targets after mixup)
        labels = jax.eval_shape(aug, jax.random.key(0), jax.ShapeDtypeStruct(
            (2, *x.shape[1:]), np.float32), labels)[1]
    try:
        value = jax.eval_shape(loss, jax.ShapeDtypeStruct(out.shape, out.dtype), labels)
    except Exception as e:  # noqa: BLE001 -- any failure of the user's loss, named
        raise ConfigError(f"loss: calling it as loss(logits, labels) on the model's outputs "
                          f"{tuple(out.shape)} and labels {labels.dtype}{tuple(labels.shape)} "
                          f"failed ({type(e).__name__}: {e}) (from {where})") from None
    if getattr(value, "shape", None) != ():
        raise ConfigError(f"loss: it must return a scalar (the batch's mean), got shape "
                          f"{getattr(value, 'shape', type(value).__name__)} (from {where})")


def load_splits(config: Config, data: DataSpec) -> data_lib.Splits:
    if data is None:
        extra = {"image_size": config.image_size} if config.image_size is not None else {}
        return data_lib.load(config.dataset, data_dir=config.data_dir, **extra)
    splits = data if isinstance(data, data_lib.Splits) or not callable(data) else data(config)
    if not isinstance(splits, data_lib.Splits):
        raise ConfigError(f"data must be a jaxcnn.data.Splits or a function of the config "
                          f"returning one (get_data), got {type(splits).__name__}")
    return splits


def build(config: Config, model: ModelSpec, data: DataSpec, loss_fn: LossSpec) -> Components:
    """Build the run's model, loss and splits (validation split, normalisation) from the
    config and the user's own ``model``, ``data`` and ``loss_fn``; refuses what cannot train
    (ConfigError, DataError, LayerError) before any folder is made."""
    sources: dict[str, str] = {}
    files: set[Path] = set()
    for key, given in (("dataset", data), ("model", model), ("loss", loss_fn)):
        if given is not None:
            sources[key], file = scripts.source_of(given)
            if file is not None:
                files.add(file)
    if len(files) > 1:
        raise ConfigError(f"model, data and loss come from several scripts "
                          f"({', '.join(map(str, sorted(files)))}); define them in one")
    splits = load_splits(config, data)
    train_split, test = splits.train, splits.test
    for split_name, split in (("train", train_split), ("test", test)):
        if len(split.images) != len(split.labels):
            raise ConfigError(f"data: the {split_name} split has {len(split.images)} images "
                              f"but {len(split.labels)} labels; give one label per image")
    labels = np.concatenate([np.asarray(train_split.labels), np.asarray(test.labels)])
    names = getattr(splits, "class_names", None)
    if names:
        num_classes = len(names)
    elif labels.ndim == 2:  # one-hot or soft targets
        num_classes = labels.shape[1]
    else:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    class_names = list(names) if names else [str(i) for i in range(num_classes)]
    if model is None:
        layer = registry.build_model(config.model, num_classes)
    else:
        layer = model if isinstance(model, Layer) or not callable(model) else model(config)
        if not isinstance(layer, Layer):
            raise ConfigError(f"model must be a jaxcnn Layer or a function of the config "
                              f"returning one (get_model), got {type(layer).__name__}")
    if loss_fn is None:
        loss = registry.build_loss(config.loss)
        if config.label_smoothing:
            loss = functools.partial(loss, label_smoothing=config.label_smoothing)
    elif config.label_smoothing:
        raise ConfigError(f"Config: label_smoothing={config.label_smoothing} applies to the "
                          f"built-in loss, but the loss comes from {sources['loss']}; smooth the "
                          f"labels there, or pass --label-smoothing 0")
    else:
        loss = loss_fn(config) if is_config_function(loss_fn) else loss_fn
        if not callable(loss):
            raise ConfigError(f"loss_fn must be a loss function (logits, labels) or a function "
                              f"of the config returning one (get_loss), got {type(loss).__name__}")
    from jaxcnn import augment as augment_lib

    aug = augment_lib.parse(",".join(config.augment), num_classes=num_classes)
    _check_fits(layer, loss, splits, names, sources, aug)
    val = None
    if config.val_fraction > 0:
        try:
            train_split, val = data_lib.train_val_split(
                train_split, config.val_fraction, seed=config.seed,
                cache=data_lib.default_cache_dir() / "splits")
        except ValueError as e:  # too few examples on one side for every class
            raise ConfigError(f"Config: val_fraction={config.val_fraction} cannot split the "
                              f"{len(splits.train.labels)} training examples of "
                              f"{sources.get('dataset', config.dataset)} with every class on "
                              f"both sides ({e.__cause__ or e}); pass a larger --val-fraction, "
                              f"or 0 for no validation split") from None
    normalization = None
    train_raw = np.array(train_split.images[:16])
    if config.normalize:
        mean, std = data_lib.channel_stats(train_split.images)
        normalization = {"mean": np.asarray(mean).ravel().tolist(),
                         "std": np.asarray(std).ravel().tolist()}

        def norm(s):
            return data_lib.Split(data_lib.normalize(s.images, mean, std), s.labels)

        train_split, test = norm(train_split), norm(test)
        val = norm(val) if val is not None else None
    if config.batch_size > len(train_split.labels):
        raise ConfigError(f"Config: batch_size={config.batch_size} is larger than the "
                          f"{len(train_split.labels)} training examples of "
                          f"{sources.get('dataset', config.dataset)}; pass a smaller "
                          f"--batch-size")
    return Components(layer, loss, train_split, val, test, np.asarray(splits.test.images),
                      class_names, normalization, sources, next(iter(files), None), aug,
                      train_raw)


def describe(config: Config, sources: dict[str, str]) -> str:
    """``model on dataset`` as the run got them, user code by its source."""
    text = f"{sources.get('model', config.model)} on {sources.get('dataset', config.dataset)}"
    return text + (f" with loss {sources['loss']}" if "loss" in sources else "")


def model_summary(config: Config, *, model: ModelSpec = None, data: DataSpec = None) -> str:
    """The model table of ``config``'s model (or ``model``) for its dataset's images."""
    if model is None and data is None and config.dataset in data_lib.DATASETS:
        info = data_lib.info(config.dataset)  # no need to read the files
        layer, shape = registry.build_model(config.model, info.num_classes), info.image_shape
    else:
        parts = build(config_lib.override(config, {"val_fraction": 0.0}), model, data, None)
        layer, shape = parts.model, parts.train.images.shape[1:]
    return str(summary(layer, (None, *shape)))


def user_code(run_dir: str | os.PathLike[str], sources: dict[str, str], model: ModelSpec,
              data: DataSpec, loss_fn: LossSpec) -> tuple[ModelSpec, DataSpec, LossSpec]:
    """The model, data and loss a resumed run gets: those given, else those its sources name
    (a script's from the run folder's checked copy, :func:`jaxcnn.scripts.import_script`)."""
    folder = Path(run_dir)
    given = {"model": model, "dataset": data, "loss": loss_fn}
    wanted = {k: s for k, s in sources.items() if given.get(k) is None}
    from_script = {k: s for k, s in wanted.items() if s.partition(":")[0].endswith(".py")}
    for key, source in wanted.items():  # before the script's code runs: these can fail
        if key not in from_script:
            given[key] = scripts.resolve(source)
    if from_script:
        entry = runs.read_status(folder).get("script")
        if not entry:
            raise RunError(f"{folder} has no record of the script its "
                           f"{', '.join(from_script)} came from; resume from Python with them "
                           f"given")
        module = scripts.import_script(folder, entry)
        for key, source in from_script.items():
            given[key] = scripts.resolve(source, module=module)
    return given["model"], given["dataset"], given["loss"]
