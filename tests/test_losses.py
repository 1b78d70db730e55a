"""Losses and metrics against NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import losses

RNG = np.random.default_rng(0)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_softmax_cross_entropy_matches_numpy():
    logits = RNG.normal(size=(7, 5)).astype(np.float32)
    labels = RNG.integers(0, 5, size=7)
    want = -np.mean(np_log_softmax(logits.astype(np.float64))[np.arange(7), labels])
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cross_entropy_of_uniform_logits_is_log_k():
    got = losses.softmax_cross_entropy(jnp.zeros((3, 10)), jnp.array([0, 4, 9]))
    np.testing.assert_allclose(got, np.log(10), rtol=1e-6)


def test_mask_excludes_padding_rows():
    logits = RNG.normal(size=(6, 3)).astype(np.float32)
    labels = RNG.integers(0, 3, size=6)
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    full = losses.softmax_cross_entropy(jnp.asarray(logits[:4]), jnp.asarray(labels[:4]))
    masked = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                          mask=jnp.asarray(mask))
    np.testing.assert_allclose(masked, full, rtol=1e-6)
    acc_full = losses.accuracy(jnp.asarray(logits[:4]), jnp.asarray(labels[:4]))
    acc_masked = losses.accuracy(jnp.asarray(logits), jnp.asarray(labels), mask=jnp.asarray(mask))
    np.testing.assert_allclose(acc_masked, acc_full)


def test_mse_is_half_mean_squared_error():
    # The tutorials' example: E = 1/2 (target - output)^2.
    pred = np.array([[0.75136507, 0.77292847]], np.float32)
    target = np.array([[0.01, 0.99]], np.float32)
    want = 0.5 * np.mean((target - pred) ** 2)
    np.testing.assert_allclose(losses.mse(jnp.asarray(pred), jnp.asarray(target)), want,
                               rtol=1e-6)


def test_mse_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"mse: pred and target must have the same shape"):
        losses.mse(jnp.zeros((2, 3)), jnp.zeros((2,)))


def test_accuracy_counts_argmax_hits():
    logits = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = jnp.array([1, 1, 1, 0])
    np.testing.assert_allclose(losses.accuracy(logits, labels), 0.75)


@pytest.mark.parametrize("bad", [-1, 3])
def test_labels_outside_the_classes_are_refused_or_nan_never_another_class(bad):
    logits = jnp.array([[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]])
    labels = jnp.array([bad, 2])
    for fn in (losses.softmax_cross_entropy, losses.accuracy):
        with pytest.raises(ValueError, match=rf"labels must be class indices in \[0, 3\) "
                                             rf"for 3 logits, got {bad}"):
            fn(logits, labels)
        assert np.isnan(jax.jit(fn)(logits, labels))  # -1 would otherwise score as class 2
        # Masked out, such a label (padding, say) counts nowhere, jitted or not.
        mask = jnp.array([0.0, 1.0])
        for f in (fn, jax.jit(fn)):
            np.testing.assert_allclose(f(logits, labels, mask=mask), fn(logits[1:], labels[1:]),
                                       rtol=1e-6)


def test_masked_rows_with_nan_change_neither_value_nor_gradient():
    logits = RNG.normal(size=(4, 3)).astype(np.float32)
    labels = jnp.array([0, 2, 1, 7])  # the masked row's label is out of range too
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    poisoned = jnp.asarray(logits).at[3].set(jnp.nan)
    target = jnp.asarray(np.eye(3, dtype=np.float32)[[0, 2, 1, 1]]).at[3].set(jnp.nan)

    def ce(z):
        return losses.softmax_cross_entropy(z, labels, mask=mask)

    def mse(z):
        return losses.mse(z, target, mask=mask)

    def ce3(z):  # the same loss over the three real rows alone
        return losses.softmax_cross_entropy(z, labels[:3])

    def mse3(z):
        return losses.mse(z, target[:3])

    for loss, clean in ((ce, ce3), (mse, mse3)):
        real = jnp.asarray(logits[:3])
        np.testing.assert_allclose(loss(poisoned), clean(real), rtol=1e-6)
        g = np.asarray(jax.grad(loss)(poisoned))
        assert np.all(g[3] == 0) and np.all(np.isfinite(g))
        np.testing.assert_allclose(g[:3], jax.grad(clean)(real), rtol=1e-6)


def test_labels_a_jitted_function_closes_over_are_checked_and_used():
    logits = jnp.asarray(RNG.normal(size=(4, 3)).astype(np.float32))
    labels = jnp.array([0, 2, 1, 1])
    want = losses.softmax_cross_entropy(logits, labels)
    for fn in (losses.softmax_cross_entropy, losses.accuracy):
        np.testing.assert_allclose(jax.jit(lambda z, fn=fn: fn(z, labels))(logits),
                                   fn(logits, labels), rtol=1e-6)
    value, _ = jax.jit(jax.value_and_grad(
        lambda z: losses.softmax_cross_entropy(z, labels)))(logits)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    bad = jnp.array([0, 3, 1, 1])  # concrete, though closed over: refused at trace time
    with pytest.raises(ValueError, match="got 3"):
        jax.jit(lambda z: losses.softmax_cross_entropy(z, bad))(logits)


def test_a_per_position_mask_and_fractional_weights():
    logits = RNG.normal(size=(2, 3, 4)).astype(np.float32)  # (N, T, K)
    labels = RNG.integers(0, 4, size=(2, 3))
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    nll = -np.take_along_axis(np_log_softmax(logits.astype(np.float64)), labels[..., None],
                              -1)[..., 0]
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                       mask=jnp.asarray(mask))
    np.testing.assert_allclose(got, nll[mask == 1].mean(), rtol=1e-6)
    # Weights: sum(w * loss) / sum(w), also when they sum to less than 1.
    flat, lab = logits[0], labels[0]
    w = np.array([0.2, 0.0, 0.2], np.float32)
    got = losses.softmax_cross_entropy(jnp.asarray(flat), jnp.asarray(lab), mask=jnp.asarray(w))
    np.testing.assert_allclose(got, nll[0][[0, 2]].mean(), rtol=1e-6)


def test_soft_targets_and_label_smoothing_against_the_formula():
    """-sum(t * log_softmax(z)) averaged over rows, with t one-hot, soft (mixup-like) or
    smoothed ``(1 - eps) * onehot + eps / K``; one-hot targets equal integer labels."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5)).astype(np.float32)
    y = np.array([0, 4, 2, 2, 1, 3])
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    onehot = np.eye(5, dtype=np.float32)[y]
    soft = 0.7 * onehot + 0.3 * np.eye(5, dtype=np.float32)[np.roll(y, 1)]
    for targets in (onehot, soft):
        want = np.mean(-(targets * log_p).sum(1))
        got = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(targets))
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y))),
                               np.mean(-(onehot * log_p).sum(1)), rtol=1e-5)
    smoothed = 0.9 * onehot + 0.1 / 5
    for labels in (y, onehot):
        got = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(labels),
                                           label_smoothing=0.1)
        np.testing.assert_allclose(float(got), np.mean(-(smoothed * log_p).sum(1)), rtol=1e-5)
    mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
    got = losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(soft), mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(got), (-(soft * log_p).sum(1) * mask).sum() / mask.sum(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\), got 1.0"):
        losses.softmax_cross_entropy(jnp.asarray(z), jnp.asarray(y), label_smoothing=1.0)
