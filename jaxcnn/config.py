"""Experiment configurations: frozen dataclasses, checked when built, overridden by name.

An experiment script's ``get_config()`` returns a :class:`Config` (classification runs) or a
:class:`FiltersConfig` (the fixed-filter demo). Every field has a type, and :func:`override`
is the one place where new values come in, from Python or the command line, so both refuse an
unknown key or a wrong type the same way: :class:`~jaxcnn.errors.ConfigError` naming the key,
the value given and the list of valid keys.

The resolved config is saved as ``config.json`` in the run folder (:func:`to_json`) and read back
on resume (:func:`from_json`). This module knows nothing of training.

>>> cfg = override(Config(), {"epochs": "3", "lr": 0.1})
>>> cfg.epochs, cfg.lr
(3, 0.1)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jaxcnn.errors import ConfigError

__all__ = [
    "DATASETS", "DRIVERS", "HOUSEKEEPING_KEYS", "LOSSES", "MAX_SEED", "MODELS", "ON_NONFINITE",
    "OPTIMIZERS", "RESUMABLE_KEYS", "SCHEDULES", "Config", "FiltersConfig", "changed_keys",
    "field_types", "from_dict", "from_json", "override", "to_dict", "to_json", "type_name",
    "valid_keys",
]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "step")
DRIVERS = ("auto", "scan", "loop")
ON_NONFINITE = ("stop", "skip")
MODELS = ("simple_cnn", "lenet5", "vgg", "vgg_small", "resnet20")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")
LOSSES = ("softmax_cross_entropy",)
#: The largest seed: JAX's PRNG keys (without x64) and scikit-learn's split take 32 bits.
MAX_SEED = 2**32 - 1

#: Keys a resumed run may change without ``force``: they do not change what is computed, or
#: (``epochs``) only extend it.
RESUMABLE_KEYS = frozenset({
    "epochs", "runs_dir", "data_dir", "log_every", "num_feature_samples", "keep_checkpoints",
    "driver", "data_parallel", "distributed", "steps_per_call",
})

#: Keys that say where and how a run is kept, not what it computes: left out of the hparams
#: that compare runs.
HOUSEKEEPING_KEYS = frozenset({
    "runs_dir", "data_dir", "log_every", "num_feature_samples", "keep_checkpoints", "driver",
    "data_parallel", "distributed", "steps_per_call", "on_nonfinite",
})


def _check_choice(cls: str, key: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{cls}: {key}={value!r} is not one of {', '.join(options)}; "
                          f"pass one of them, e.g. --{key.replace('_', '-')} {options[0]}")


def _check_int(cls: str, key: str, value: Any, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{cls}: {key}={value!r} but it must be >= {minimum}; pass a larger "
                          f"value")


@dataclass(frozen=True)
class Config:
    """A classification experiment: data, model, optimizer, schedule, logging and checkpoints.

    ``experiment`` names the run folder ``<runs_dir>/<experiment>/<timestamp>-<id>/``.
    ``dataset`` is one of :data:`DATASETS` or a folder of the user's images (see
    :func:`jaxcnn.data.load`; ``image_size`` resizes them), ``model`` one of :data:`MODELS`,
    ``loss`` one of :data:`LOSSES` (with ``label_smoothing`` in [0, 1)); an experiment script's
    ``get_model``, ``get_data`` or ``get_loss`` replaces them (:func:`jaxcnn.experiment.run`).
    ``augment``: the training batches' augmentations in :func:`jaxcnn.augment.parse`'s syntax,
    one item each (``--augment crop:4,flip`` gives ``("crop:4", "flip")``). ``ema_decay`` > 0
    evaluates (and checkpoints as best, and loads for prediction) an exponential moving average
    of the parameters (:mod:`jaxcnn.ema`).
    ``optimizer`` is one of :data:`OPTIMIZERS` ("momentum" is SGD with ``momentum``; "adamw"
    uses ``weight_decay`` decoupled, the others add ``weight_decay * w`` to the gradient).
    ``schedule`` is one of :data:`SCHEDULES`: "cosine" decays ``lr`` to 0 over the run,
    "warmup_cosine" first rises linearly for ``warmup_epochs``, "step" multiplies by
    ``decay_factor`` at each epoch in ``decay_epochs`` (default: at 50% and 75% of the run).
    ``val_fraction`` of the training set is held out (stratified by ``seed``) for validation,
    the best checkpoint and early stopping; 0 disables it. ``normalize`` standardises inputs with
    the training set's per-channel mean and std. Train scalars are written every ``log_every``
    steps; ``num_feature_samples`` test images are shown through every conv layer each epoch.
    ``early_stopping_patience`` epochs without a better validation accuracy stop the run
    (0 = off); ``loss_tolerance`` stops it once an epoch's mean train loss is below it (0 = off).
    ``on_nonfinite``: "stop" raises on a NaN/Inf loss, "skip" drops those steps and counts them.
    ``steps_per_call`` training steps run in one compiled call (a loop over batches), between which
    the runner listens for SIGINT/SIGTERM: a signal stops it within two such calls, with a
    checkpoint in the middle of the epoch; larger values dispatch less often, results are the
    same bit for bit.
    ``data_parallel`` splits every batch over all of ``jax.devices()`` (the parameters
    replicated; ``batch_size`` must divide evenly); ``distributed`` first joins a multi-process
    run (:func:`jaxcnn.distributed.initialize`, configured by ``$JAXCNN_COORDINATOR``,
    ``$JAXCNN_NUM_PROCESSES``, ``$JAXCNN_PROCESS_ID`` or a cluster's own variables) and trains
    data-parallel over every process's devices, process 0 alone writing the run folder.
    """

    experiment: str = "experiment"
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    model: str = "simple_cnn"
    loss: str = "softmax_cross_entropy"
    label_smoothing: float = 0.0
    augment: tuple[str, ...] = ()
    ema_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "momentum"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    decay_epochs: tuple[int, ...] = ()
    decay_factor: float = 0.1
    seed: int = 0
    val_fraction: float = 0.1
    normalize: bool = True
    log_every: int = 10
    num_feature_samples: int = 4
    keep_checkpoints: int = 3
    runs_dir: str = "runs"
    early_stopping_patience: int = 0
    loss_tolerance: float = 0.0
    driver: str = "auto"
    on_nonfinite: str = "stop"
    steps_per_call: int = 20
    data_parallel: bool = False
    distributed: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.dataset, os.PathLike):  # a folder given as a Path
            object.__setattr__(self, "dataset", os.fspath(self.dataset))
        _check_types(self)
        name = type(self).__name__
        if self.dataset not in DATASETS and not _is_folder(self.dataset):
            raise ConfigError(f"{name}: dataset={self.dataset!r} is neither one of "
                              f"{', '.join(DATASETS)} nor a folder of images; pass one of them, "
                              f"or the path of a folder laid out <folder>/<class>/*.png")
        _check_choice(name, "model", self.model, MODELS)
        _check_choice(name, "loss", self.loss, LOSSES)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{name}: ema_decay={self.ema_decay!r} but it must lie in [0, 1); "
                              f"pass e.g. 0.999, or 0 to evaluate the parameters themselves")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{name}: label_smoothing={self.label_smoothing!r} but it must lie "
                              f"in [0, 1); pass e.g. 0.1, or 0 for none")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"{name}: image_size={self.image_size!r} but it must be >= 1 "
                              f"(or none to keep the images' own size)")
        if self.image_size is not None and self.dataset in DATASETS:
            raise ConfigError(f"{name}: image_size applies to folder datasets, but dataset="
                              f"{self.dataset!r} is built in; leave image_size unset")
        _check_choice(name, "optimizer", self.optimizer, OPTIMIZERS)
        _check_choice(name, "schedule", self.schedule, SCHEDULES)
        _check_choice(name, "driver", self.driver, DRIVERS)
        _check_choice(name, "on_nonfinite", self.on_nonfinite, ON_NONFINITE)
        for key in ("epochs", "batch_size", "log_every", "keep_checkpoints", "steps_per_call"):
            _check_int(name, key, getattr(self, key), 1)
        for key in ("seed", "num_feature_samples", "early_stopping_patience"):
            _check_int(name, key, getattr(self, key), 0)
        if self.seed > MAX_SEED:  # JAX's 32-bit keys would drop the high bits: another seed's run
            raise ConfigError(f"{name}: seed={self.seed} but it must be at most {MAX_SEED} "
                              f"(2**32 - 1); pass a smaller --seed")
        for key in ("lr", "momentum", "weight_decay", "warmup_epochs", "loss_tolerance",
                    "decay_factor"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{name}: {key}={getattr(self, key)!r} but it must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"{name}: val_fraction={self.val_fraction!r} but it must lie in "
                              f"[0, 1); pass e.g. 0.1, or 0 for no validation split")
        if self.warmup_epochs and self.schedule != "warmup_cosine":
            raise ConfigError(f"{name}: warmup_epochs={self.warmup_epochs!r} applies to "
                              f"schedule='warmup_cosine' only, but schedule={self.schedule!r}; "
                              f"pass --schedule warmup_cosine, or --warmup-epochs 0")
        if self.decay_epochs and self.schedule != "step":
            raise ConfigError(f"{name}: decay_epochs={self.decay_epochs!r} applies to "
                              f"schedule='step' only, but schedule={self.schedule!r}; pass "
                              f"--schedule step, or leave decay_epochs unset")
        if self.early_stopping_patience and not self.val_fraction:
            raise ConfigError(f"{name}: early_stopping_patience={self.early_stopping_patience} "
                              f"needs a validation split to watch (the test split is for "
                              f"reporting only); pass --val-fraction 0.1, or "
                              f"--early-stopping-patience 0")
        if not _is_identifier_like(self.experiment):
            raise ConfigError(f"{name}: experiment={self.experiment!r} must be a non-empty name "
                              f"of letters, digits, '_', '-' or '.', since it names a folder")


@dataclass(frozen=True)
class FiltersConfig:
    """The fixed-filter demo: Sobel, Gaussian and sharpen applied to real photographs.

    ``images`` names scikit-learn's sample photographs (``china.jpg``, ``flower.jpg``), resized
    so their longer side is ``max_size`` pixels; ``gaussian_size``/``gaussian_sigma`` shape the
    blur.
    """

    experiment: str = "filters_demo"
    images: tuple[str, ...] = ("china.jpg", "flower.jpg")
    max_size: int = 256
    gaussian_size: int = 5
    gaussian_sigma: float = 1.5
    runs_dir: str = "runs"

    def __post_init__(self) -> None:
        _check_types(self)
        name = type(self).__name__
        _check_int(name, "max_size", self.max_size, 8)
        _check_int(name, "gaussian_size", self.gaussian_size, 1)
        if not self.gaussian_sigma > 0:
            raise ConfigError(f"{name}: gaussian_sigma={self.gaussian_sigma!r} but it must be > 0")
        if not self.images:
            raise ConfigError(f"{name}: images is empty; name at least one, e.g. china.jpg")
        if not _is_identifier_like(self.experiment):
            raise ConfigError(f"{name}: experiment={self.experiment!r} must be a non-empty name "
                              f"of letters, digits, '_', '-' or '.', since it names a folder")


_CLASSES: dict[str, type] = {"Config": Config, "FiltersConfig": FiltersConfig}
AnyConfig = Config | FiltersConfig


def _is_folder(dataset: str) -> bool:
    """Whether ``dataset`` names a folder: a path with a separator, or an existing folder."""
    return bool(dataset) and ("/" in dataset or os.sep in dataset or os.path.isdir(dataset))


def _is_identifier_like(name: str) -> bool:
    return bool(name) and name not in (".", "..") and all(
        c.isalnum() or c in "_-." for c in name)


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of the dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def valid_keys(cls_or_config: Any) -> tuple[str, ...]:
    """The field names of a config class or instance, in order."""
    return tuple(f.name for f in dataclasses.fields(cls_or_config))


def type_name(tp: Any) -> str:
    """A field type as the command line's help shows it (``int | None``, ``tuple[int, ...]``)."""
    if tp is type(None):
        return "None"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return " | ".join(type_name(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"tuple[{type_name(args[0])}, ...]"
    return getattr(tp, "__name__", str(tp))


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` as type ``tp``, parsing strings; raises ValueError when it is not one."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if type(None) in args and (value is None or (isinstance(value, str) and
                                                     value.lower() in ("none", "null"))):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except ValueError:
                pass
        raise ValueError(value)
    if origin is tuple:
        if isinstance(value, str):
            items = [v for v in (s.strip() for s in value.split(",")) if v]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ValueError(value)
        return tuple(_coerce(args[0], v) for v in items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError(value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(value)
    raise ValueError(value)


def _is_instance(tp: Any, value: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        return any(_is_instance(a, value) for a in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_is_instance(args[0], v) for v in value)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _check_types(config: Any) -> None:
    """Refuse a field whose value does not have its declared type (e.g. ``lr="0.1"``)."""
    name = type(config).__name__
    for key, tp in field_types(type(config)).items():
        value = getattr(config, key)
        if not _is_instance(tp, value):
            raise ConfigError(f"{name}: {key}={value!r} has type {type(value).__name__} but "
                              f"{type_name(tp)} is needed; valid keys are "
                              f"{', '.join(valid_keys(config))}")


def _unknown(cls: type, key: str) -> ConfigError:
    keys = valid_keys(cls)
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{cls.__name__}: unknown config key {key!r}{hint}; valid keys are "
                       f"{', '.join(keys)}")


def override(config: Any, overrides: Mapping[str, Any]) -> Any:
    """A copy of ``config`` with ``overrides`` applied; string values are parsed to the field's
    type (``"3"`` -> 3, ``"true"`` -> True, ``"none"`` -> None, ``"1,2"`` -> (1, 2)).

    Keys may use ``-`` for ``_`` (``runs-dir``). Raises ConfigError for an unknown key or a
    value of the wrong type, with the list of valid keys, or when the new config is invalid.
    """
    cls = type(config)
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    for raw_key, value in overrides.items():
        key = raw_key.replace("-", "_")
        if key not in types_:
            raise _unknown(cls, raw_key)
        try:
            values[key] = _coerce(types_[key], value)
        except ValueError:
            raise ConfigError(
                f"{cls.__name__}: {key}={value!r} is not a valid {type_name(types_[key])}; "
                f"valid keys are {', '.join(valid_keys(cls))}") from None
    return dataclasses.replace(config, **values)


def changed_keys(old: Any, new: Any) -> list[str]:
    """The fields whose values differ between two configs of one class, in field order."""
    return [k for k in valid_keys(old) if getattr(old, k) != getattr(new, k)]


def to_dict(config: Any) -> dict[str, Any]:
    """The config as a JSON-ready dict, its class name under ``"_class"``."""
    out: dict[str, Any] = {"_class": type(config).__name__}
    for key in valid_keys(config):
        value = getattr(config, key)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(d: Mapping[str, Any]) -> Any:
    """The config :func:`to_dict` wrote; unknown keys or bad values raise ConfigError."""
    d = dict(d)
    cls_name = d.pop("_class", "Config")
    if cls_name not in _CLASSES:
        raise ConfigError(f"config class {cls_name!r} is unknown; expected one of "
                          f"{', '.join(_CLASSES)}")
    cls = _CLASSES[cls_name]
    return override(cls(), d)


def to_json(config: Any) -> str:
    """``config`` as indented JSON text (``config.json`` in a run folder)."""
    return json.dumps(to_dict(config), indent=2) + "\n"


def from_json(text: str) -> Any:
    """The config in JSON ``text`` written by :func:`to_json`."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config JSON cannot be parsed ({e}); restore or rewrite it") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config JSON must hold an object, got {type(d).__name__}")
    return from_dict(d)
