"""Data augmentation: pure, jittable, per-example random transforms of a batch.

An augmentation is a callable ``aug(key, images, labels) -> (images, labels)`` with
images (N, H, W, C) and labels (N,) int class indices or (N, K) float targets. Each transform
is a frozen dataclass (hashable, so it can be a static argument of ``jax.jit``, and printable)
that draws its random numbers from ``key`` alone with ``jax.random`` and keeps every shape
static, so it runs inside a compiled training step (``jax.lax.scan`` over batches) with no host
round trip. ``params(key, shape)`` returns what ``__call__`` draws for images of that shape.

Crop, flip, translate and cutout return labels unchanged; mixup and cutmix return float (N, K)
soft targets. ``parse("crop:4:reflect,flip,cutout:8")`` builds one from the command line and
``describe`` gives that spec back.

    >>> aug = compose(random_crop(4), random_flip(), cutout(8))
    >>> images, labels = aug(jax.random.key(0), images, labels)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import ConfigError
from jaxcnn.typedefs import Array, Key

__all__ = ["Augmentation", "Compose", "CutMix", "Cutout", "Mixup", "RandomCrop", "RandomFlip",
           "RandomTranslate", "compose", "cutmix", "cutout", "describe", "mixup", "parse",
           "random_crop", "random_flip", "random_translate"]

Augmentation = Callable[[Key, Array, Array], tuple[Array, Array]]


# --- checks --------------------------------------------------------------------------------
def _int(name: str, arg: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ConfigError(f"{name}: {arg} must be an integer >= {low}, got {value!r}")
    return int(value)


def _alpha(name: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float | np.number)
            or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{name}: alpha must be a finite number > 0, got {value!r}")
    return float(value)


def _batch(name: str, images: Any, labels: Any) -> tuple[Array, Array]:
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"{name}: images must be 4-D (N, H, W, C), got shape "
                         f"{tuple(images.shape)}")
    if labels.ndim == 0 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{name}: labels must have leading size {images.shape[0]} (one per "
                         f"image of {tuple(images.shape)}), got shape {tuple(labels.shape)}")
    return images, labels


def _n(shape: int | tuple[int, ...]) -> int:
    return shape if isinstance(shape, int) else shape[0]


def _hw(name: str, shape: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(shape, int) or len(shape) != 4:
        raise ValueError(f"{name}: params needs the images' shape (N, H, W, C), got {shape!r}")
    return shape[1], shape[2]


# --- geometric transforms: labels unchanged ------------------------------------------------
def _window(images: Array, pad: int, mode: str, offsets: Array) -> Array:
    """Pad (N, H, W, C) ``images`` by ``pad`` ("zeros" or "reflect") and take the H x W window
    of each at ``offsets`` (N, 2) (row, column) in the padded image."""
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                     mode="constant" if mode == "zeros" else "reflect")
    def one(image: Array, offset: Array) -> Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jax.vmap(one)(padded, offsets)


@dataclass(frozen=True)
class RandomCrop:
    """Pad each image by ``pad`` on every side (zeros or reflect), crop back to H x W at a
    random offset per example, uniform in [0, 2*pad] per axis. Build with ``random_crop``."""

    pad: int = 4
    mode: str = "zeros"

    def __post_init__(self) -> None:
        object.__setattr__(self, "pad", _int("random_crop", "pad", self.pad, 0))
        if self.mode not in ("zeros", "reflect"):
            raise ConfigError(f"random_crop: mode must be 'zeros' or 'reflect', got "
                              f"{self.mode!r}")

    def params(self, key: Key, shape: int | tuple[int, ...]) -> Array:
        """Offsets (N, 2) int32, (row, column) of each crop in the padded image."""
        return jax.random.randint(key, (_n(shape), 2), 0, 2 * self.pad + 1)

    def __call__(self, key: Key, images: Array, labels: Array) -> tuple[Array, Array]:
        images, labels = _batch("random_crop", images, labels)
        return _window(images, self.pad, self.mode, self.params(key, images.shape)), labels

    def spec(self) -> str:
        return f"crop:{self.pad}" + (":reflect" if self.mode == "reflect" else "")


@dataclass(frozen=True)
class RandomFlip:
    """Mirror each image left-right with probability ``p``. Build with ``random_flip``."""

    p: float = 0.5

    def __post_init__(self) -> None:
        if (isinstance(self.p, bool) or not isinstance(self.p, int | float | np.number)
                or not 0 <= self.p <= 1):
            raise ConfigError(f"random_flip: p must be a probability in [0, 1], got {self.p!r}")
        object.__setattr__(self, "p", float(self.p))

    def params(self, key: Key, shape: int | tuple[int, ...]) -> Array:
        """Which examples are flipped: (N,) bool."""
        return jax.random.bernoulli(key, self.p, (_n(shape),))

    def __call__(self, key: Key, images: Array, labels: Array) -> tuple[Array, Array]:
        images, labels = _batch("random_flip", images, labels)
        flip = self.params(key, images.shape)[:, None, None, None]
        return jnp.where(flip, images[:, :, ::-1, :], images), labels

    def spec(self) -> str:
        return "flip" if self.p == 0.5 else f"flip:{self.p!r}"


@dataclass(frozen=True)
class RandomTranslate:
    """Shift each image by integer (dy, dx), each uniform in [-max_shift, max_shift], filling
    with zeros: out[y, x] = image[y - dy, x - dx]. Build with ``random_translate``."""

    max_shift: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_shift",
                           _int("random_translate", "max_shift", self.max_shift, 0))

    def params(self, key: Key, shape: int | tuple[int, ...]) -> Array:
        """Shifts (N, 2) int32, (dy, dx) per example."""
        m = self.max_shift
        return jax.random.randint(key, (_n(shape), 2), -m, m + 1)

    def __call__(self, key: Key, images: Array, labels: Array) -> tuple[Array, Array]:
        images, labels = _batch("random_translate", images, labels)
        offsets = self.max_shift - self.params(key, images.shape)
        return _window(images, self.max_shift, "zeros", offsets), labels

    def spec(self) -> str:
        return f"translate:{self.max_shift}"


def _box_mask(y0: Array, y1: Array, x0: Array, x1: Array, h: int, w: int) -> Array:
    """(..., H, W) bool: rows [y0, y1) and columns [x0, x1); bounds have shape (...)."""
    ys, xs = jnp.arange(h), jnp.arange(w)
    rows = (ys >= y0[..., None]) & (ys < y1[..., None])
    cols = (xs >= x0[..., None]) & (xs < x1[..., None])
    return rows[..., :, None] & cols[..., None, :]


@dataclass(frozen=True)
class Cutout:
    """Set a size x size square to 0 in every channel, at a random centre per example uniform
    over the image; the square is clipped at the border (DeVries & Taylor 2017). Rows
    [cy - size//2, cy - size//2 + size), columns likewise. Build with ``cutout``."""

    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _int("cutout", "size", self.size, 1))

    def params(self, key: Key, shape: tuple[int, ...]) -> Array:
        """Centres (N, 2) int32, (row, column), uniform in [0, H) x [0, W)."""
        h, w = _hw("cutout", shape)
        return jax.random.randint(key, (shape[0], 2), 0, jnp.array([h, w]))

    def __call__(self, key: Key, images: Array, labels: Array) -> tuple[Array, Array]:
        images, labels = _batch("cutout", images, labels)
        _, h, w, _ = images.shape
        start = self.params(key, images.shape) - self.size // 2
        end = start + self.size
        mask = _box_mask(start[:, 0], end[:, 0], start[:, 1], end[:, 1], h, w)
        return jnp.where(mask[..., None], jnp.zeros((), images.dtype), images), labels

    def spec(self) -> str:
        return f"cutout:{self.size}"


# --- mixing transforms: labels become soft targets -----------------------------------------
class MixupParams(NamedTuple):
    lam: Array  # () float: weight of each example itself
    perm: Array  # (N,) int32: the partner of example i is perm[i]


class CutMixParams(NamedTuple):
    lam: Array  # () float: 1 - the pasted box's area fraction
    perm: Array  # (N,) int32: the partner of example i is perm[i]
    box: Array  # (4,) int32: rows [y0, y1), columns [x0, x1) taken from the partner


@dataclass(frozen=True)
class _Mixing:
    """What mixup and cutmix share: ``alpha``, ``num_classes`` and their inputs' checks."""

    alpha: float
    num_classes: int | None = None
    name: ClassVar[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _alpha(self.name, self.alpha))
        if self.num_classes is not None:
            object.__setattr__(self, "num_classes",
                               _int(self.name, "num_classes", self.num_classes, 1))

    def _inputs(self, images: Array, labels: Array) -> tuple[Array, Array]:
        """Float images and (N, K) float targets from (N,) int labels or (N, K) float ones."""
        name, k = self.name, self.num_classes
        images, labels = _batch(name, images, labels)
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"{name}: images must be float to be mixed, got {images.dtype}; "
                             f"convert them first with images.astype(jnp.float32)")
        if jnp.issubdtype(labels.dtype, jnp.integer) and labels.ndim == 1:
            if k is None:
                raise ValueError(f"{name}: integer labels need num_classes to become one-hot "
                                 f"targets; pass {name}(..., num_classes=K)")
            return images, jax.nn.one_hot(labels, k, dtype=jnp.float32)
        if jnp.issubdtype(labels.dtype, jnp.floating) and labels.ndim == 2:
            if k is not None and labels.shape[1] != k:
                raise ValueError(f"{name}: soft targets must have {k} columns (num_classes), "
                                 f"got shape {tuple(labels.shape)}")
            return images, labels
        raise ValueError(f"{name}: labels must be (N,) int class indices or (N, K) float "
                         f"targets, got {labels.dtype} of shape {tuple(labels.shape)}")

    def spec(self) -> str:
        return f"{self.name}:{self.alpha!r}"


@dataclass(frozen=True)
class Mixup(_Mixing):
    """Mixup (Zhang et al. 2018) with one lam ~ Beta(alpha, alpha) per batch: images
    lam*x + (1-lam)*x[perm], targets lam*t + (1-lam)*t[perm] for a random permutation of the
    batch. Returns (N, K) float targets. Build with ``mixup``."""

    alpha: float = 0.2
    name: ClassVar[str] = "mixup"

    def params(self, key: Key, shape: int | tuple[int, ...]) -> MixupParams:
        k_lam, k_perm = jax.random.split(key)
        return MixupParams(jax.random.beta(k_lam, self.alpha, self.alpha),
                           jax.random.permutation(k_perm, _n(shape)))

    def __call__(self, key: Key, images: Array, labels: Array) -> tuple[Array, Array]:
        images, targets = self._inputs(images, labels)
        lam, perm = self.params(key, images.shape)
        lam_x, lam_t = lam.astype(images.dtype), lam.astype(targets.dtype)
        return (lam_x * images + (1 - lam_x) * images[perm],
                lam_t * targets + (1 - lam_t) * targets[perm])


@dataclass(frozen=True)
class CutMix(_Mixing):
    """CutMix (Yun et al. 2019), one box per batch: draw lam ~ Beta(alpha, alpha), a centre
    uniform over the image and a box of ``floor(H*sqrt(1-lam))`` x ``floor(W*sqrt(1-lam))``
    (half of each side either way of the centre, clipped at the border); paste that box from
    the partner ``x[perm]``, then set lam to 1 - the box's actual area fraction and mix the
    targets with it. Returns (N, K) float targets. Build with ``cutmix``."""

    alpha: float = 1.0
    name: ClassVar[str] = "cutmix"

    def params(self, key: Key, shape: tuple[int, ...]) -> CutMixParams:
        h, w = _hw("cutmix", shape)
        k_lam, k_perm, k_centre = jax.random.split(key, 3)
        drawn = jax.random.beta(k_lam, self.alpha, self.alpha)
        side = jnp.sqrt(jnp.clip(1.0 - drawn, 0.0, 1.0))
        half_h = jnp.floor(h * side).astype(jnp.int32) // 2
        half_w = jnp.floor(w * side).astype(jnp.int32) // 2
        cy, cx = jax.random.randint(k_centre, (2,), 0, jnp.array([h, w]))
        box = jnp.stack([jnp.clip(cy - half_h, 0, h), jnp.clip(cy + half_h, 0, h),
                         jnp.clip(cx - half_w, 0, w), jnp.clip(cx + half_w, 0, w)])
        lam = 1.0 - (box[1] - box[0]) * (box[3] - box[2]) / (h * w)
        return CutMixParams(lam.astype(jnp.float32), jax.random.permutation(k_perm, shape[0]),
                            box)

    def __call__(self, key: Key, images: Array, labels: Array) -> tuple[Array, Array]:
        images, targets = self._inputs(images, labels)
        lam, perm, box = self.params(key, images.shape)
        mask = _box_mask(box[0], box[1], box[2], box[3], images.shape[1], images.shape[2])
        lam_t = lam.astype(targets.dtype)
        return (jnp.where(mask[None, :, :, None], images[perm], images),
                lam_t * targets + (1 - lam_t) * targets[perm])


@dataclass(frozen=True)
class Compose:
    """Apply ``augs`` in order, each with its own key from ``jax.random.split(key, len(augs))``.
    Build with ``compose``."""

    augs: tuple[Augmentation, ...] = ()

    def __call__(self, key: Key, images: Array, labels: Array) -> tuple[Array, Array]:
        keys = jax.random.split(key, len(self.augs)) if self.augs else ()
        for k, aug in zip(keys, self.augs, strict=True):
            images, labels = aug(k, images, labels)
        return images, labels

    def spec(self) -> str:
        return ",".join(describe(a) for a in self.augs)


# --- constructors --------------------------------------------------------------------------
def random_crop(pad: int = 4, *, mode: str = "zeros") -> RandomCrop:
    """Pad by ``pad`` (``mode`` "zeros" or "reflect") and crop back at a random offset."""
    return RandomCrop(pad, mode)


def random_flip(*, p: float = 0.5) -> RandomFlip:
    """Horizontal flip with probability ``p`` per example."""
    return RandomFlip(p)


def random_translate(max_shift: int) -> RandomTranslate:
    """Integer shift in [-max_shift, max_shift] per axis per example, zeros filling."""
    return RandomTranslate(max_shift)


def cutout(size: int) -> Cutout:
    """Zero a size x size square (clipped at the border) at a random centre per example."""
    return Cutout(size)


def mixup(alpha: float = 0.2, *, num_classes: int | None = None) -> Mixup:
    """Mixup with lam ~ Beta(alpha, alpha) per batch; ``num_classes`` one-hots int labels."""
    return Mixup(alpha, num_classes)


def cutmix(alpha: float = 1.0, *, num_classes: int | None = None) -> CutMix:
    """CutMix with lam ~ Beta(alpha, alpha) per batch; ``num_classes`` one-hots int labels."""
    return CutMix(alpha, num_classes)


def compose(*augs: Augmentation) -> Augmentation:
    """Apply ``augs`` in order with split keys. Nested composes are flattened and a single
    transform is returned as it is, so ``parse(describe(a)) == a`` for every ``a``."""
    flat: list[Augmentation] = []
    for aug in augs:
        if not callable(aug):
            raise ConfigError(f"compose: every argument must be an augmentation "
                              f"aug(key, images, labels), got {aug!r}")
        flat.extend(aug.augs if isinstance(aug, Compose) else (aug,))
    return flat[0] if len(flat) == 1 else Compose(tuple(flat))


# --- command line --------------------------------------------------------------------------
_SYNTAX = {"crop": "crop[:PAD[:zeros|reflect]]", "flip": "flip[:P]",
           "translate": "translate:MAX_SHIFT", "cutout": "cutout:SIZE",
           "mixup": "mixup[:ALPHA]", "cutmix": "cutmix[:ALPHA]"}
_HELP = (f"valid names: {', '.join(_SYNTAX)}; syntax: {', '.join(_SYNTAX.values())}, joined by "
         f"commas, e.g. 'crop:4:reflect,flip,cutout:8'")


def _number(kind: type, text: str, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{what} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {text!r}") from None


def _build(name: str, args: list[str], num_classes: int | None) -> Augmentation:
    most = {"crop": 2, "translate": 1, "cutout": 1}.get(name, 1)
    need = 1 if name in ("translate", "cutout") else 0
    if not need <= len(args) <= most:
        count = f"{need}" if need == most else f"{need} to {most}"
        raise ConfigError(f"takes {count} parameter(s), got {len(args)}")
    if name == "crop":
        pad = _number(int, args[0], "PAD") if args else 4
        return random_crop(pad, mode=args[1] if len(args) > 1 else "zeros")
    if name == "flip":
        return random_flip(p=_number(float, args[0], "P") if args else 0.5)
    if name == "translate":
        return random_translate(_number(int, args[0], "MAX_SHIFT"))
    if name == "cutout":
        return cutout(_number(int, args[0], "SIZE"))
    if num_classes is None:
        raise ConfigError("needs num_classes: call parse(spec, num_classes=K)")
    factory = mixup if name == "mixup" else cutmix
    alpha = _number(float, args[0], "ALPHA") if args else (0.2 if name == "mixup" else 1.0)
    return factory(alpha, num_classes=num_classes)


def parse(spec: str, *, num_classes: int | None = None) -> Augmentation | None:
    """The augmentation a command-line ``spec`` names, e.g. ``"crop:4:reflect,flip,cutout:8"``
    or ``"mixup:0.2"`` (mixup and cutmix need ``num_classes``); None for an empty spec."""
    if not spec.strip():
        return None
    augs = []
    for item in (part.strip() for part in spec.split(",")):
        name, *args = item.split(":")
        if name not in _SYNTAX:
            raise ConfigError(f"augmentation spec {spec!r}: unknown augmentation {name!r}; "
                              f"{_HELP}")
        try:
            augs.append(_build(name, args, num_classes))
        except ConfigError as err:
            where = f"{spec!r}" if item == spec.strip() else f"{spec!r}: {item!r}"
            raise ConfigError(f"augmentation spec {where}: {err}; {_HELP}") from None
    return compose(*augs)


def describe(aug: Augmentation | None) -> str:
    """The canonical spec of ``aug`` ("" for None), so that ``parse(describe(aug)) == aug``
    (pass mixup's and cutmix's ``num_classes`` to ``parse`` again)."""
    if aug is None:
        return ""
    if not isinstance(aug, RandomCrop | RandomFlip | RandomTranslate | Cutout | _Mixing | Compose):
        raise ConfigError(f"describe: {aug!r} is not a jaxcnn.augment transform; build it with "
                          f"random_crop, random_flip, random_translate, cutout, mixup, cutmix, "
                          f"compose or parse")
    return aug.spec()
