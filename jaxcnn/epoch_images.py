"""The images a training epoch logs to TensorBoard: each conv layer's filters, a few fixed
images, their feature maps after every conv layer and what explains the network's prediction
for them (saliency and Grad-CAM overlays, :mod:`jaxcnn.explain`), and the report split's
confusion matrix and misclassified examples."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import numpy as np

from jaxcnn import checkpoint as ckpt
from jaxcnn import data as data_lib
from jaxcnn import explain, visualize, walk
from jaxcnn.layers import Layer
from jaxcnn.typedefs import Params, State
from jaxcnn.walk import intermediates

__all__ = ["MAX_FEATURE_CHANNELS", "MAX_MISCLASSIFIED", "EpochImages", "conv_kernels",
           "unit_range"]

MAX_FEATURE_CHANNELS = 64
MAX_MISCLASSIFIED = 36


def conv_kernels(params: Params) -> dict[str, Any]:
    """``{layer path: kernel}`` for every 4-D ``w`` leaf of ``params`` (conv kernels, HWIO)."""
    return {path[: -len("/w")]: w for path, w in ckpt.flatten(params).items()
            if path.endswith("/w") and np.ndim(w) == 4}


def unit_range(images: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) as an image writer takes them: each scaled to [0, 1] where the set
    is not already in [0, 1] (standardised inputs, say)."""
    x = np.asarray(images, np.float32)
    if x.size and (x.min() < 0 or x.max() > 1):
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        span = x.max(axis=(1, 2, 3), keepdims=True) - lo
        x = (x - lo) / np.where(span > 0, span, 1.0)
    return x


class EpochImages:
    """``images(params, state, predictions) -> {tag: image}`` for one epoch.

    ``split`` (named ``name``, e.g. "test") is the split the images come from, and
    ``predictions`` its arg-max classes; ``shown``: its images as they should be shown
    (N, H, W, C) in [0, 1] (default: its inputs through :func:`unit_range`). The confusion
    matrix and the misclassified images need integer labels; other targets get neither.
    """

    def __init__(self, model: Layer, name: str, split: data_lib.Split | None,
                 num_classes: int, *, shown: np.ndarray | None = None,
                 num_feature_samples: int = 4,
                 class_names: Sequence[str] | None = None) -> None:
        self.name, self.split, self.num_classes = name, split, num_classes
        self.class_names = list(class_names) if class_names is not None else None
        n = min(num_feature_samples, len(split.labels)) if split is not None else 0
        self.features = split.images[:n] if n else None
        self.shown = (unit_range(split.images if shown is None else shown)
                      if split is not None else None)
        labels = np.asarray(split.labels) if split is not None else np.zeros(0)
        self.classified = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
        self.features_fn = jax.jit(lambda p, s, x: intermediates(model, p, s, x))
        self.has_conv = any(node.info.kind == "Conv" for node in walk.nodes(model))
        # Compiled once for every epoch's params.
        self.explain_fns = {"saliency": jax.jit(partial(explain.saliency_maps, model))}
        if self.has_conv:
            self.explain_fns["grad_cam"] = jax.jit(partial(explain.grad_cam_maps, model))

    def __call__(self, params: Params, state: State,
                 predictions: np.ndarray | None) -> dict[str, Any]:
        images: dict[str, Any] = {f"filters/{p}": visualize.filter_grid(w)
                                  for p, w in conv_kernels(params).items()}
        if self.features is not None:
            images["features/input"] = self.shown[:len(self.features)]
            for p, fmap in self.features_fn(params, state, self.features).items():
                images[f"features/{p}"] = visualize.feature_map_grid(
                    np.asarray(fmap), max_channels=MAX_FEATURE_CHANNELS)
            if self.classified:
                images.update(self.explained(params, state))
        if predictions is None or not self.classified:
            return images
        labels = self.split.labels
        cm = visualize.confusion_matrix(labels, predictions, self.num_classes)
        images[f"{self.name}/confusion_matrix"] = visualize.confusion_matrix_image(
            cm, class_names=self.class_names)
        wrong_x, wrong_t, wrong_p = visualize.misclassified(self.shown, labels, predictions)
        if len(wrong_t):
            images[f"{self.name}/misclassified"] = visualize.annotated_grid(
                wrong_x, wrong_t, wrong_p, class_names=self.class_names,
                max_images=MAX_MISCLASSIFIED)
        return images

    def explained(self, params: Params, state: State) -> dict[str, np.ndarray]:
        """``explain/saliency`` and ``explain/grad_cam`` (where the model has a conv layer):
        each fixed image with its map for the predicted class on top, (N, H, W, 3)."""
        out: dict[str, np.ndarray] = {}
        for name, maps_fn in self.explain_fns.items():
            maps = np.asarray(maps_fn(params, state, self.features))
            out[f"explain/{name}"] = np.stack([
                explain.overlay(shown, heat)
                for heat, shown in zip(maps, self.shown, strict=False)])
        return out
