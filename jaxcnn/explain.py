"""Why did the model say that? Saliency maps and Grad-CAM for one image, and a heat-map overlay.

Both explanations differentiate the *class score* ``y_c``: the model's output at class ``c``
(``target``, by default the predicted class), taken as the model gives it, so the logit for a
model that ends in a Dense layer (the usual choice), a probability for one that ends in Softmax.
The model runs in inference mode (``train=False``: BatchNorm uses its running statistics,
Dropout keeps everything).

- :func:`saliency` (Simonyan et al. 2013): ``|dy_c/dx|``, the largest over the channels at each
  pixel, divided by its maximum. Pixel-sharp, often noisy.
- :func:`grad_cam` (Selvaraju et al. 2017): the feature maps ``A`` (h, w, K) of a layer (the
  model's last Conv layer unless ``layer=`` names one) weighted by ``alpha_k = mean_{i,j}
  dy_c/dA_k[i, j]``, summed, ReLU'd, resized bilinearly to the image and divided by the maximum.
  Coarse (the layer's resolution) but class-specific.
- :func:`overlay`: the image blended with a heat map coloured from blue (0) through cyan and
  yellow to red (1), in NumPy alone.

:func:`saliency_maps` and :func:`grad_cam_maps` compute the same maps for a batch of images
(N, H, W, C) as pure JAX functions, which ``jax.jit`` compiles once for many calls (the runner
logs them each epoch); :func:`saliency` and :func:`grad_cam` check their arguments and run them
on one image.

Both maps are float32 (H, W) in [0, 1], 0 where the gradient (or the weighted sum) is 0
everywhere. The gradient at a layer's output comes from running the model through
:func:`jaxcnn.walk.propagate` with a zero added to that output and differentiating with respect
to the zero (``dy/d(delta)`` at ``delta = 0`` is ``dy/dA``), which works at any depth of nested
serial, parallel and residual combinators.

>>> import jax, numpy as np
>>> from jaxcnn import layers as L
>>> net = L.serial(L.Conv(4, 3, padding="SAME"), L.Relu(), L.GlobalAvgPool(), L.Dense(3))
>>> _, params, state = net.init(jax.random.key(0), (None, 8, 8, 1))
>>> image = np.random.default_rng(0).random((8, 8, 1), np.float32)
>>> cam = grad_cam(net, params, state, image, target=2)
>>> cam.shape, cam.dtype, bool(cam.min() >= 0 and cam.max() <= 1)
((8, 8), dtype('float32'), True)
>>> overlay(image, saliency(net, params, state, image)).shape
(8, 8, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import walk
from jaxcnn.checks import is_int, is_real
from jaxcnn.layers.combinators import merge_branches
from jaxcnn.layers.core import Layer, layer_info
from jaxcnn.typedefs import Array, Params, State

__all__ = ["grad_cam", "grad_cam_maps", "overlay", "saliency", "saliency_maps"]


def saliency(model: Layer, params: Params, state: State, image: Any,
             target: int | None = None) -> np.ndarray:
    """The saliency map of ``image`` for class ``target``: (H, W) float32 in [0, 1].

    image: (H, W, C) or a batch of one (1, H, W, C), floating, as ``model`` takes it;
    ``target`` is a class index in [0, K), by default the predicted class (the argmax of the
    model's output). The map is ``max_c |dy_target/dx[h, w, c]|`` divided by its maximum
    (zeros when the gradient is zero everywhere).

    >>> import jax, numpy as np
    >>> from jaxcnn import layers as L
    >>> net = L.serial(L.Conv(2, 3), L.Relu(), L.Flatten(), L.Dense(4))
    >>> _, params, state = net.init(jax.random.key(0), (None, 6, 6, 3))
    >>> saliency(net, params, state, np.ones((6, 6, 3), np.float32)).shape
    (6, 6)
    """
    x = _image("saliency", image)
    y = _scores("saliency", jax.eval_shape(lambda x: model.apply(params, state, x)[0], x))
    targets = _targets("saliency", target, y.shape[1])
    return np.asarray(saliency_maps(model, params, state, x, targets)[0])


def saliency_maps(model: Layer, params: Params, state: State, images: Array,
                  targets: Array | None = None) -> Array:
    """:func:`saliency` for each image of a batch, as a pure JAX function: (N, H, W) float32.

    images: (N, H, W, C), floating; ``targets``: (N,) class indices (default: each image's
    predicted class). Each image goes through the model alone, as a batch of one (``jax.vmap``),
    as in :func:`saliency`. Nothing is checked here; :func:`saliency` checks one image's
    arguments.
    """
    def one(x, c):
        y, vjp = jax.vjp(lambda x: model.apply(params, state, x[None])[0][0], x)
        c = jnp.argmax(y) if c is None else c
        (g,) = vjp(jax.nn.one_hot(c, y.shape[0], dtype=y.dtype))
        return jnp.max(jnp.abs(g), axis=-1)

    return _units(jax.vmap(one)(images, targets))


def grad_cam(model: Layer, params: Params, state: State, image: Any, target: int | None = None,
             *, layer: str | None = None, upsample: bool = True) -> np.ndarray:
    """The Grad-CAM map of ``image`` for class ``target``: (H, W) float32 in [0, 1].

    image: (H, W, C) or a batch of one (1, H, W, C), floating; ``target`` as in
    :func:`saliency`. ``layer`` is the path of the layer whose output gives the feature maps
    ``A`` (1, h, w, K): by default the model's last Conv layer in :func:`jaxcnn.walk.nodes`
    order; any layer with such an output may be named (``"conv2"``, or a residual block such as
    ``"stage3_block3"``, whose output is the block's after the skip connection). The map is
    ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the mean over (h, w) of ``dy_target/dA_k``,
    resized to (H, W) with ``jax.image.resize(..., "bilinear")`` and divided by its maximum
    (zeros when that is 0). ``upsample=False`` returns it at the layer's (h, w) instead.

    >>> import jax, numpy as np
    >>> from jaxcnn import models
    >>> model = models.lenet5()
    >>> _, params, state = model.init(jax.random.key(0), (None, 28, 28, 1))
    >>> image = np.zeros((28, 28, 1), np.float32)
    >>> grad_cam(model, params, state, image, layer="conv2", upsample=False).shape
    (10, 10)
    """
    path = _feature_layer(model, layer)
    x = _image("grad_cam", image)
    out, a_struct = _shapes_at(model, params, state, x, path)
    _scores("grad_cam", out)
    if len(a_struct.shape) != 4:
        raise ValueError(f"grad_cam: layer {path!r} gives shape {a_struct.shape}, not feature maps "
                         f"(N, h, w, K); name a layer with such an output, e.g. one of the Conv "
                         f"layers {_conv_paths(model)}")
    targets = _targets("grad_cam", target, out.shape[1])
    return np.asarray(grad_cam_maps(model, params, state, x, targets, layer=path,
                                    upsample=upsample)[0])


def grad_cam_maps(model: Layer, params: Params, state: State, images: Array,
                  targets: Array | None = None, *, layer: str | None = None,
                  upsample: bool = True) -> Array:
    """:func:`grad_cam` for each image of a batch, as a pure JAX function: (N, H, W) float32,
    or (N, h, w) with ``upsample=False``.

    images: (N, H, W, C), floating; ``targets``: (N,) class indices (default: each image's
    predicted class); ``layer`` as in :func:`grad_cam`, whose output must be (1, h, w, K) for
    an image. Each image goes through the model alone, as in :func:`saliency_maps`; only the
    layer's name is checked here.
    """
    path = _feature_layer(model, layer)

    def one(x, c):
        x = x[None]
        a_struct = _shapes_at(model, params, state, x, path)[1]

        def scores(delta):
            kept = []

            def add(a):
                kept.append(a)
                return a + delta

            y = _apply_at(model, params, state, x, at=path, fn=add)
            return y[0], kept[0]

        y, vjp, a = jax.vjp(scores, jnp.zeros(a_struct.shape, a_struct.dtype), has_aux=True)
        c = jnp.argmax(y) if c is None else c
        (g,) = vjp(jax.nn.one_hot(c, y.shape[0], dtype=y.dtype))
        alpha = jnp.mean(g[0], axis=(0, 1))  # (K,)
        cam = jax.nn.relu(jnp.einsum("hwk,k->hw", a[0], alpha))
        return jax.image.resize(cam, x.shape[1:3], "bilinear") if upsample else cam

    return _units(jax.vmap(one)(images, targets))


def overlay(image: Any, heat: Any, *, alpha: float = 0.5) -> np.ndarray:
    """``image`` with ``heat`` coloured on top: (H, W, 3) float32 in [0, 1].

    image: (H, W), (H, W, 1), (H, W, 3) or a batch of one (1, H, W, C), in [0, 1], grey being
    repeated into RGB; heat: (H, W) in [0, 1], as :func:`saliency` and :func:`grad_cam` give it,
    coloured as MATLAB's jet: dark blue (0), blue, cyan, yellow, red, dark red (1). The result is
    ``(1 - alpha) * image + alpha * colour``; values outside [0, 1] are clipped, non-finite
    ones count as 0.

    >>> import numpy as np
    >>> overlay(np.zeros((1, 4)), np.array([[0.0, 0.25, 0.5, 0.75]]), alpha=1.0)[0]
    array([[0. , 0. , 0.5],
           [0. , 0.5, 1. ],
           [0.5, 1. , 0.5],
           [1. , 0.5, 0. ]], dtype=float32)
    """
    if not is_real(alpha) or not 0 <= alpha <= 1:
        raise ValueError(f"overlay: alpha must be a number in [0, 1], got {alpha!r}")
    img = np.asarray(image, np.float64)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"overlay: image must be (H, W), (H, W, 1), (H, W, 3) or a batch of one "
                         f"(1, H, W, C), got shape {np.shape(image)}")
    h = np.asarray(heat, np.float64)
    if h.shape != img.shape[:2]:
        raise ValueError(f"overlay: heat must be (H, W) = {img.shape[:2]} like the image, got "
                         f"shape {h.shape}")
    img, h = _clip01(np.broadcast_to(img, (*img.shape[:2], 3))), _clip01(h)
    return ((1 - alpha) * img + alpha * _jet(h)).astype(np.float32)


def _jet(t: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3): three overlapping ramps, peaking at 1/4 (blue), 1/2
    (green) and 3/4 (red), as MATLAB's jet does."""
    return np.stack([np.clip(1.5 - np.abs(4 * t - c), 0, 1) for c in (3, 2, 1)], axis=-1)


def _clip01(x: np.ndarray) -> np.ndarray:
    return np.clip(np.where(np.isfinite(x), x, 0.0), 0.0, 1.0)


def _image(fn: str, image: Any) -> Array:
    """``image`` as a batch of one (1, H, W, C), in its own floating dtype."""
    x = jnp.asarray(image)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"{fn}: image must be one image (H, W, C) or a batch of one "
                         f"(1, H, W, C), got shape {tuple(np.shape(image))}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{fn}: image has dtype {x.dtype} but a floating-point dtype is "
                         f"needed; convert it first, e.g. image.astype(np.float32) / 255 for "
                         f"uint8 images")
    return x


def _scores(fn: str, y: Any) -> Any:
    """The model's output ``y`` (an array, or its ShapeDtypeStruct), once checked to be class
    scores (1, K)."""
    if len(y.shape) != 2:
        raise ValueError(f"{fn}: the model's output must be class scores (N, K), got shape "
                         f"{tuple(y.shape)}; explain a classifier (one ending in Dense)")
    return y


def _targets(fn: str, target: int | None, k: int) -> Array | None:
    """``target`` checked against ``k`` classes, as the (1,) targets of a batch of one."""
    if target is None:
        return None
    if not is_int(target) or not 0 <= target < k:
        raise ValueError(f"{fn}: target must be a class index in [0, {k}), got {target!r}")
    return jnp.array([int(target)])


def _units(m: Array) -> Array:
    """Each map of ``m`` (N, h, w) divided by its maximum (zeros where that is not > 0), as
    float32, the division done in float32 or ``m``'s wider dtype."""
    m = m.astype(jnp.promote_types(m.dtype, jnp.float32))
    top = jnp.max(m, axis=(1, 2), keepdims=True)
    # The barrier keeps XLA from turning the division into a multiplication by 1 / top, whose
    # rounding leaves some maxima at 0.99999994.
    den = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.where(top > 0, top, 1), m.shape))
    return jnp.where(top > 0, m / den, 0).astype(jnp.float32)


def _conv_paths(model: Layer) -> list[str]:
    return [n.path for n in walk.nodes(model) if n.info.kind == "Conv"]


def _feature_layer(model: Layer, layer: str | None) -> str:
    """The path of the layer whose output Grad-CAM explains."""
    convs = _conv_paths(model)
    if layer is None:
        if not convs:
            info = layer_info(model)
            paths = [n.path for n in walk.nodes(model) if n.path]
            raise ValueError(f"grad_cam: the model {info.name or info.base!r} (layers "
                             f"{paths}) has no Conv layer, so it has no feature maps to "
                             f"explain; pass layer= the path of a layer with a (N, h, w, K) "
                             f"output, or use saliency")
        return convs[-1]
    if not isinstance(layer, str):
        raise ValueError(f"grad_cam: layer must be a layer's path such as 'conv2', got "
                         f"{layer!r}")
    if layer not in {n.path for n in walk.nodes(model)}:
        raise ValueError(f"grad_cam: layer {layer!r} is not a layer of the model; its Conv "
                         f"layers are {convs}")
    return layer


def _shapes_at(model: Layer, params: Params, state: State, x: Array,
               path: str) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """The shapes of ``model``'s output for ``x`` and of the output of its layer at ``path``,
    traced without computing them."""
    out, feats = jax.eval_shape(
        lambda x: walk.record_outputs(model, params, state, x, where=lambda n: n.path == path), x)
    (a_struct,) = feats.values()
    return out, a_struct


def _apply_at(model: Layer, params: Params, state: State, x: Array, *, at: str,
              fn: Callable[[Array], Array]) -> Array:
    """``model``'s output in inference mode, with ``fn`` applied to the output of the layer at
    path ``at`` before the rest of the model sees it (the walk of
    :func:`jaxcnn.walk.record_outputs`, with a hook)."""

    def hook(node: walk.Node, y: Array) -> Array:
        return fn(y) if node.path == at else y

    def leaf(node: walk.Node, h: Array) -> Array:
        y, _ = node.layer.apply(walk.subtree(params, node), walk.subtree(state, node), h,
                                train=False)
        return hook(node, y)

    def merge(node: walk.Node, h: Array, outputs: list[Array]) -> Array:
        return hook(node, merge_branches(node.info.combine, outputs))

    return walk.propagate(model, x, leaf=leaf, merge=merge)
