"""Using a trained model: load a run's checkpoint and predict on images.

:func:`load` reads a run folder (:mod:`jaxcnn.runs`): its config, the model (a built-in one by
name, a script's from the run folder's checked copy of the script, or one given again), the
parameters and state of a checkpoint (without the optimizer's), the normalisation and the class
names. :meth:`TrainedModel.predict` then takes images as a user has them, uint8 in [0, 255] or
float in [0, 1], applies the run's own normalisation and returns class probabilities.

Runs made before ``run.json`` recorded the normalisation, the class names and the input shape
get them from the dataset, read again (the same split and statistics the run used).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import checkpoint as ckpt
from jaxcnn import components, registry, runs, walk
from jaxcnn import data as data_lib
from jaxcnn.config import Config, FiltersConfig
from jaxcnn.errors import CheckpointError, DataError, RunError
from jaxcnn.layers import Layer

__all__ = ["TrainedModel", "explain", "load", "read_image"]


@dataclass(frozen=True)
class TrainedModel:
    """A trained network, ready to predict: ``model`` (the Layer), its ``params`` and
    ``state``, the run's ``config``, ``class_names`` (one per output),
    ``input_shape`` ``(H, W, C)``, the normalisation ``mean`` and ``std`` (per channel, or None
    when the run did not normalise), and where it came from."""

    model: Layer
    params: Any
    state: Any
    config: Config
    class_names: list[str]
    input_shape: tuple[int, int, int]
    mean: np.ndarray | None
    std: np.ndarray | None
    run_dir: Path
    checkpoint: Path
    _forward: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        model = self.model

        def probabilities(params, state, x):
            logits, _ = model.apply(params, state, x, train=False)
            return jax.nn.softmax(logits, axis=-1)

        object.__setattr__(self, "_forward", jax.jit(probabilities))

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` per channel, or None."""
        if self.mean is None:
            return None
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def prepare(self, images: Any) -> np.ndarray:
        """``images`` as the network takes them: (N, H, W, C) float32, normalised.

        ``images``: ``(N, H, W, C)``, one ``(H, W, C)``, or grey ``(H, W)`` / ``(N, H, W)``
        where the network takes one channel; uint8 in [0, 255] or float in [0, 1]."""
        x = np.asarray(images)
        h, w, c = self.input_shape
        needed = f"(N, {h}, {w}, {c}) or ({h}, {w}, {c})" + (
            f", or grey ({h}, {w}) / (N, {h}, {w})" if c == 1 else "")
        if x.ndim == 2 and c == 1:
            x = x[None, :, :, None]
        elif x.ndim == 3 and x.shape == (h, w, c):
            x = x[None]
        elif x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != (h, w, c):
            raise DataError(f"predict: images of shape {np.shape(images)} do not fit this "
                            f"model, which takes {needed}; resize them to {h}x{w} with {c} "
                            f"channel{'s' if c > 1 else ''} (jaxcnn predict does that for "
                            f"image files)")
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
            if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
                raise DataError(f"predict: float images must lie in [0, 1], got values from "
                                f"{float(np.nanmin(x))} to {float(np.nanmax(x))}; pass uint8 "
                                f"pixels in [0, 255], or divide by 255")
        else:
            raise DataError(f"predict: images must be uint8 in [0, 255] or float in [0, 1], "
                            f"got dtype {x.dtype}")
        if self.mean is not None:
            x = data_lib.normalize(x, self.mean, self.std)
        return x

    def predict(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(N, K)`` of ``images`` (see :meth:`prepare`), computed jitted
        in batches of at most ``batch_size`` (the last one padded, so one shape compiles)."""
        x = self.prepare(images)
        n = len(x)
        size = min(batch_size, n) if n else 1
        out = []
        for lo in range(0, n, size):
            batch = x[lo: lo + size]
            if len(batch) < size:
                batch = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]),
                                                        batch.dtype)])
            out.append(np.asarray(self._forward(self.params, self.state, batch)))
        k = len(self.class_names)
        return np.concatenate(out)[:n] if out else np.zeros((0, k), np.float32)


def read_image(path: str | os.PathLike[str], input_shape: tuple[int, int, int]) -> np.ndarray:
    """The image file ``path`` (PNG, JPEG, or whatever Pillow reads) as uint8 ``(H, W, C)`` for
    a network taking ``input_shape``: converted to grey (C = 1) or RGB (C = 3) and resized
    (bilinear) to H x W. DataError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    h, w, c = input_shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            x = np.asarray(img, np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as an image ({e}); pass PNG or JPEG "
                        f"files") from None
    return x.reshape(h, w, c)


def explain(trained: TrainedModel, image: Any, *, method: str = "grad_cam",
            target: int | None = None) -> np.ndarray:
    """Where in ``image`` (one image, as :meth:`TrainedModel.prepare` takes it) the network
    looks for class ``target`` (default: the one it predicts): an (H, W) map in [0, 1] by
    ``method`` "grad_cam" (the last conv layer's; "saliency" for a model without one) or
    "saliency" (:mod:`jaxcnn.explain`)."""
    from jaxcnn import explain as explain_lib

    if method not in ("grad_cam", "saliency"):
        raise ValueError(f"explain: method must be 'grad_cam' or 'saliency', got {method!r}")
    x = trained.prepare(image)
    if len(x) != 1:
        raise DataError(f"explain: one image at a time, got {len(x)}")
    if method == "grad_cam" and not any(node.info.kind == "Conv"
                                        for node in walk.nodes(trained.model)):
        method = "saliency"
    fn = explain_lib.grad_cam if method == "grad_cam" else explain_lib.saliency
    return fn(trained.model, trained.params, trained.state, x[0], target)


def _ema_template(path: Path, params: Any) -> tuple[Any, list[str]] | None:
    """A template for the moving average of ``params`` that a checkpoint's optimizer state
    holds (:mod:`jaxcnn.ema`, saved under ``opt_state/<...>/ema/<param path>``) and the keys
    it sits under, or None."""
    first = next(iter(ckpt.flatten(params)), None)
    if first is None:
        return None
    with np.load(path) as f:
        keys = [k for k in f.files if k.startswith("opt_state/") and k.endswith(f"/ema/{first}")]
    if not keys:
        return None
    parts = keys[0][: -len(first) - 1].split("/")
    tree = params
    for part in reversed(parts):
        tree = {part: tree}
    return tree, parts


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    folder = run_dir / runs.CHECKPOINTS
    last = ckpt.latest(folder)
    if last is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to load (the run was "
                              f"stopped before its first); resume it with "
                              f"{runs.resume_command(run_dir)}, or load another run")
    if checkpoint == "last":
        return last
    if checkpoint == "best":
        try:
            name = (folder / "best").read_text().strip()
        except OSError:
            name = ""
        path = folder / f"{name}.npz"
        if name and ckpt.is_complete(path):
            return path
        warnings.warn(f"{run_dir} has no best checkpoint (it has no validation split, or it "
                      f"was stopped before an epoch ended); loading the last one, "
                      f"{last.stem}", UserWarning, stacklevel=3)
        return last
    path = folder / f"{checkpoint}.npz"
    if not ckpt.is_complete(path):
        names = ", ".join(p.stem for p in ckpt.checkpoints(folder))
        raise CheckpointError(f"{run_dir} has no complete checkpoint {checkpoint!r}; pass "
                              f"'best', 'last' or one of: {names}")
    return path


def load(run_dir: str | os.PathLike[str], *, checkpoint: str = "best",
         model: Layer | Any = None, data: Any = None) -> TrainedModel:
    """The trained model of the run in ``run_dir``, at ``checkpoint``: ``"best"`` (the best
    validation epoch; the last checkpoint, with a warning, where the run has none), ``"last"``
    or a checkpoint's name (``ckpt-000003``).

    A model built in by name is rebuilt; a script's ``get_model`` from the run folder's copy of
    the script (checked against its sha256: importing it runs its code); a model given as a
    Python object must be given again (``model=``, and ``data=`` where the run's data was an
    object and the run predates the input shape in ``run.json``). Raises RunError (not a run
    folder), CheckpointError (no such checkpoint).
    """
    folder = Path(run_dir)
    config, sources = runs.load_config(folder)
    if isinstance(config, FiltersConfig):
        raise RunError(f"{folder} is a filters_demo run: it trained no model to load")
    path = _checkpoint_path(folder, checkpoint)
    status = runs.read_status(folder)
    names, shape, norm = (status.get("class_names"), status.get("input_shape"),
                          status.get("normalization", False))
    wanted = {k: v for k, v in sources.items() if k == "model" or (k == "dataset" and (
        names is None or shape is None or norm is False))}
    model, data, _ = components.user_code(folder, wanted, model, data, None)
    if names is None or shape is None or norm is False:  # a run from before they were saved
        parts = components.build(config, model, data, None)
        names, shape, norm = (parts.class_names, list(parts.train.images.shape[1:]),
                              parts.normalization)
        layer = parts.model
    elif model is None:
        layer = registry.build_model(config.model, len(names))
    else:
        layer = model if isinstance(model, Layer) or not callable(model) else model(config)
    shape = tuple(int(d) for d in shape)
    abstract = jax.eval_shape(lambda k: layer.init(k, (None, *shape))[1:],
                              jax.random.key(0))
    restored, _ = ckpt.restore(path, {"params": abstract[0], "state": abstract[1]},
                               partial=True)
    ema = _ema_template(path, abstract[0])
    if ema is not None:  # the run evaluated a moving average of its parameters: predict so too
        averaged, _ = ckpt.restore(path, ema[0], partial=True)
        for part in ema[1]:
            averaged = averaged[part]
        restored["params"] = averaged
    mean = np.asarray(norm["mean"], np.float32) if norm else None
    std = np.asarray(norm["std"], np.float32) if norm else None
    return TrainedModel(layer, restored["params"], restored["state"], config, list(names),
                        shape, mean, std, folder, path)
