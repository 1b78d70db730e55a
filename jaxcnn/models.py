"""Classic CNNs built from :mod:`jaxcnn.layers`; each returns a :class:`~jaxcnn.layers.Layer`.

>>> import jax
>>> from jaxcnn import models, summary
>>> summary(models.lenet5(), (None, 28, 28, 1)).total_params
61706
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from jaxcnn import layers as L
from jaxcnn.checks import is_int
from jaxcnn.errors import LayerError
from jaxcnn.layers import Layer

__all__ = ["lenet5", "resnet20", "simple_cnn", "vgg"]

_ACTIVATIONS = {"relu": L.Relu, "tanh": L.Tanh, "sigmoid": L.Sigmoid, "elu": L.Elu,
                "leaky_relu": L.LeakyRelu}
_POOLS = {"max": L.MaxPool, "avg": L.AvgPool}


def _choice(model: str, what: str, value: str, options: dict):
    if value not in options:
        raise LayerError(model, None, f"{what} must be one of {sorted(options)}, got {value!r}")
    return options[value]


def _num_classes(model: str, num_classes: int) -> int:
    if not is_int(num_classes) or num_classes < 1:
        raise LayerError(model, None, f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def lenet5(num_classes: int = 10, *, activation: str = "relu", pool: str = "max") -> Layer:
    """LeNet-5 in its common 28x28x1 form (LeCun et al. 1998, with a SAME first convolution).

    conv 6@5x5 SAME -> act -> pool 2 -> conv 16@5x5 -> act -> pool 2 -> dense 120 -> act ->
    dense 84 -> act -> dense ``num_classes``: 61,706 parameters for 10 classes. The 1998 paper
    used tanh and trainable subsampling; ``activation="tanh", pool="avg"`` is the closest here.
    """
    act = _choice("lenet5", "activation", activation, _ACTIVATIONS)
    pooling = _choice("lenet5", "pool", pool, _POOLS)
    return L.serial(
        L.Conv(6, 5, padding="SAME"), act(), pooling(2),
        L.Conv(16, 5), act(), pooling(2),
        L.Flatten(),
        L.Dense(120), act(),
        L.Dense(84), act(),
        L.Dense(_num_classes("lenet5", num_classes)),
    )


def simple_cnn(num_classes: int = 10) -> Layer:
    """The CNN of Flax's MNIST example: conv 32@3x3 SAME, ReLU, avg-pool 2; conv 64@3x3 SAME,
    ReLU, avg-pool 2; dense 256, ReLU; dense ``num_classes``."""
    return L.serial(
        L.Conv(32, 3, padding="SAME"), L.Relu(), L.AvgPool(2),
        L.Conv(64, 3, padding="SAME"), L.Relu(), L.AvgPool(2),
        L.Flatten(),
        L.Dense(256), L.Relu(),
        L.Dense(_num_classes("simple_cnn", num_classes)),
    )


def vgg(
    num_classes: int = 10,
    *,
    stages: Sequence[Sequence[int]] = ((32, 32), (64, 64), (128, 128)),
    dense: Sequence[int] = (256,),
    batch_norm: bool = True,
    dropout: float = 0.0,
) -> Layer:
    """A VGG-style net (Simonyan and Zisserman 2014): stages of [conv 3x3 SAME -> (BN) -> ReLU]
    with the given widths, each stage closed by a 2x2 max-pool; then dense layers with ReLU
    (and dropout) and the classifier. The defaults suit 32x32 inputs."""
    if not stages or not all(stages):
        raise LayerError("vgg", None, f"stages must be a non-empty list of non-empty width "
                         f"lists, got {stages!r}")
    blocks = []
    for s, widths in enumerate(stages, start=1):
        stage = []
        for width in widths:
            stage += [L.Conv(width, 3, padding="SAME")]
            stage += [L.BatchNorm()] if batch_norm else []
            stage += [L.Relu()]
        blocks.append(L.serial(*stage, L.MaxPool(2), name=f"stage{s}"))
    head = [L.Flatten()]
    for width in dense:
        head += [L.Dense(width), L.Relu()] + ([L.Dropout(dropout)] if dropout else [])
    head.append(L.Dense(_num_classes("vgg", num_classes)))
    return L.serial(*blocks, *head)


def _subsample_pad(channels: int) -> Layer:
    """He et al.'s option-A shortcut: take every other pixel and zero-pad the new channels."""

    def fn(x):
        x = x[:, ::2, ::2, :]
        extra = channels - x.shape[-1]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))

    return L.Lambda(fn, kind="SubsamplePad", name="shortcut", window=1, stride=2, per_example=True)


def _basic_block(channels: int, stride: int, in_channels: int, shortcut: str, name: str) -> Layer:
    body = [
        L.Conv(channels, 3, stride=stride, padding="SAME", use_bias=False), L.BatchNorm(),
        L.Relu(),
        L.Conv(channels, 3, padding="SAME", use_bias=False), L.BatchNorm(),
    ]
    skip = None
    if stride != 1 or channels != in_channels:
        if shortcut == "A":
            skip = _subsample_pad(channels)
        else:
            skip = L.serial(L.Conv(channels, 1, stride=stride, use_bias=False), L.BatchNorm())
    return L.serial(L.residual(*body, shortcut=skip, name="residual"), L.Relu(), name=name)


def resnet20(num_classes: int = 10, *, shortcut: str = "A") -> Layer:
    """ResNet-20 for 32x32x3 images (He et al. 2015, section 4.2): conv 16@3x3, then three
    stages of three basic blocks with 16, 32 and 64 channels (stride 2 at the start of stages 2
    and 3), global average pooling and a dense classifier. ``shortcut="A"`` (the paper's CIFAR
    choice, 269,722 parameters) subsamples and zero-pads; ``"B"`` uses 1x1 projections."""
    if shortcut not in ("A", "B"):
        raise LayerError("resnet20", None, f"shortcut must be 'A' or 'B', got {shortcut!r}")
    blocks, in_ch = [], 16
    for s, channels in enumerate((16, 32, 64), start=1):
        for b in range(3):
            stride = 2 if (s > 1 and b == 0) else 1
            blocks.append(_basic_block(channels, stride, in_ch, shortcut, f"stage{s}_block{b + 1}"))
            in_ch = channels
    return L.serial(
        L.Conv(16, 3, padding="SAME", use_bias=False), L.BatchNorm(), L.Relu(),
        *blocks,
        L.GlobalAvgPool(),
        L.Dense(_num_classes("resnet20", num_classes)),
    )
