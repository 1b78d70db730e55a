"""jaxcnn: convolutional neural networks as pure JAX functions.

Layers are ``(init, apply)`` pairs over plain dicts of arrays (:mod:`jaxcnn.layers`), built on
pure array ops (:mod:`jaxcnn.ops`); :func:`summary` tabulates a model and :mod:`jaxcnn.walk`
walks its layer tree. Training lives in :mod:`jaxcnn.train` (:func:`train.fit` over the one loop,
:class:`jaxcnn.loop.Loop`, and the steps of :mod:`jaxcnn.steps`) and :mod:`jaxcnn.losses`, data
sets in :mod:`jaxcnn.data`, TensorBoard logging in :mod:`jaxcnn.tracking` and
:mod:`jaxcnn.visualize`, and the experiment runner in :mod:`jaxcnn.experiment` (with
:mod:`jaxcnn.config`, :mod:`jaxcnn.runs`, :mod:`jaxcnn.checkpoint` and the ``jaxcnn`` command
of :mod:`jaxcnn.cli`).
"""

import importlib
from typing import Any

from jaxcnn import cpu, errors, filters, layers, losses, models, ops
from jaxcnn.layers import Layer
from jaxcnn.summarize import Summary, SummaryRow, summary

# Imported on first use: they pull in tensorboardX, scikit-learn or the runner, which code
# that only composes layers should not pay for at import.
_LAZY = ("augment", "checkpoint", "components", "config", "data", "distributed", "experiment",
         "explain", "export", "registry", "runs", "scripts", "steps",
         "tracking", "train", "trained", "visualize", "walk")

__all__ = ["Layer", "Summary", "SummaryRow", "cpu", "errors", "filters", "layers", "losses",
           "models", "load", "ops", "summary", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "load":  # jaxcnn.load(run_dir): a trained model, see jaxcnn.trained
        return importlib.import_module("jaxcnn.trained").load
    if name in _LAZY:
        return importlib.import_module(f"jaxcnn.{name}")
    raise AttributeError(f"module 'jaxcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"load"})


__version__ = "0.1.0"
