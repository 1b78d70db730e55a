"""Losses and metrics, each a mean over the examples of a batch.

Every function takes an optional ``mask`` (N,) of 1.0 for real examples and 0.0 for the padding
that keeps the last batch of an evaluation at a fixed shape (for cross-entropy and accuracy it
may also have the labels' shape, e.g. (N, T) per position); masked examples count nowhere
(whatever their values, NaN included), and other non-negative values weight the mean.

Integer labels outside [0, K) for K logits are refused with a ValueError where they are
concrete, and give NaN under ``jit`` (never another class's loss, as indexing would wrap -1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.typedefs import Array

__all__ = ["accuracy", "mse", "softmax_cross_entropy"]


def _masked_mean(values: Array, mask: Array | None) -> Array:
    if mask is None:
        return jnp.mean(values)
    mask = jnp.asarray(mask).astype(values.dtype)
    kept = jnp.where(mask != 0, values * mask, 0.0)
    total = jnp.sum(mask)  # weights: a mean weighted by the mask (0 where it is all 0)
    return jnp.sum(kept) / jnp.where(total > 0, total, 1.0)


def _zero_masked(x: Array, mask: Array | None) -> Array:
    """``x`` (N, ...) with its masked entries set to 0 before any arithmetic, so that whatever
    they held (NaN, say) reaches neither the value nor the gradient. ``mask`` covers the
    leading axes of ``x``: (N,) per example, or e.g. (N, T) per position."""
    if mask is None:
        return x
    m = jnp.asarray(mask)
    keep = m.reshape(m.shape + (1,) * (x.ndim - m.ndim)) != 0
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


def _check_labels(where: str, logits: Array, labels: Array, mask: Array | None) -> Array:
    """Checks the labels' type and shape, and where they are concrete their range; returns
    which examples have a label in [0, K)."""
    # Float or one-hot labels fail deep inside optax; (N, 1) labels broadcast to a wrong mean.
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != logits.shape[:-1]:
        soft = where == "softmax_cross_entropy"
        targets = f" or float targets of shape {tuple(logits.shape)}" if soft else ""
        hint = "" if soft else "; for one-hot labels pass labels.argmax(-1)"
        raise ValueError(f"{where}: labels must be integer class indices of shape "
                         f"{tuple(logits.shape[:-1])}{targets} for logits of shape "
                         f"{tuple(logits.shape)}, got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}{hint}")
    k = logits.shape[-1]
    valid = (labels >= 0) & (labels < k)
    if not any(isinstance(a, jax.core.Tracer) for a in (labels, mask)):
        # Concrete values (also those a jitted function closes over): checked in NumPy.
        lab = np.asarray(labels)
        counted = (lab >= 0) & (lab < k)
        if mask is not None:
            counted |= np.asarray(mask) == 0
        if not counted.all():
            bad = np.unique(lab[~counted])
            raise ValueError(f"{where}: labels must be class indices in [0, {k}) for {k} "
                             f"logits, got {', '.join(map(str, bad[:5]))}"
                             f"{', ...' if len(bad) > 5 else ''}; renumber the classes from 0 "
                             f"(or mask those examples out)")
    return valid


def softmax_cross_entropy(logits: Array, labels: Array, *, mask: Array | None = None,
                          label_smoothing: float = 0.0) -> Array:
    """Mean cross-entropy of softmax(logits) against the labels. logits: (N, K) float; labels:
    (N,) int class indices in [0, K), or (N, K) float targets, each row a distribution
    (one-hot, or soft as mixup and cutmix make them). ``label_smoothing`` eps in [0, 1) mixes
    every target with the uniform distribution, ``(1 - eps) * target + eps / K`` (Szegedy et
    al. 2016)."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"softmax_cross_entropy: label_smoothing must lie in [0, 1), got "
                         f"{label_smoothing!r}")
    k = logits.shape[-1]
    soft = jnp.issubdtype(labels.dtype, jnp.floating) and labels.shape == logits.shape
    if soft:
        targets, valid = _zero_masked(labels, mask), None
    else:
        valid = _check_labels("softmax_cross_entropy", logits, labels, mask)
        safe = jnp.where(valid, labels, 0)
        targets = jax.nn.one_hot(safe, k, dtype=logits.dtype) if label_smoothing else None
    logits = _zero_masked(logits, mask)
    if targets is None:
        per_example = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    else:
        if label_smoothing:
            targets = (1.0 - label_smoothing) * targets + label_smoothing / k
        per_example = optax.softmax_cross_entropy(logits, targets)
    if valid is not None:
        per_example = jnp.where(valid, per_example, jnp.nan)
    return _masked_mean(per_example, mask)


def mse(pred: Array, target: Array, *, mask: Array | None = None) -> Array:
    """Half the mean squared error, the tutorials' 1/2 (actual - predicted)^2 averaged over every
    element: ``0.5 * mean((pred - target) ** 2)``. pred, target: (N, ...) of one shape (e.g.
    softmax outputs against one-hot labels)."""
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred and target must have the same shape, got {pred.shape} and "
                         f"{target.shape}")
    pred, target = _zero_masked(pred, mask), _zero_masked(target, mask)
    per_example = jnp.mean(optax.l2_loss(pred, target), axis=tuple(range(1, pred.ndim)))
    return _masked_mean(per_example, mask)


def accuracy(logits: Array, labels: Array, *, mask: Array | None = None) -> Array:
    """Fraction of examples whose arg-max class is the label. logits: (N, K); labels: (N,)."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    valid = _check_labels("accuracy", logits, labels, mask)
    hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return _masked_mean(jnp.where(valid, hits, jnp.nan), mask)
