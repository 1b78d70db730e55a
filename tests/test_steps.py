"""jaxcnn.steps: the chunked gradient of a large batch (cpu.chunk_plan) in make_train_step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import cpu, layers, losses, train

N = 32  # with the rules below: 16 slices of 2 rows, in 4 chunks of 8 rows (4 slices each)


@pytest.fixture
def small_chunks(monkeypatch):
    """The chunk rule scaled down to a batch of 32, whatever the host."""
    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 2)
    monkeypatch.setattr(cpu.slices, "MIN_SLICED_BATCH", 8)
    monkeypatch.setattr(cpu.slices, "MIN_CHUNKED_BATCH", 16)
    monkeypatch.setattr(cpu.slices, "SLICE_BYTES", 1)  # slices of SLICE_ROWS rows
    assert cpu.chunk_plan(N, 1000) == (4, 4) and cpu.batch_slices(N) == 16


def _model(spy=None):
    head = [] if spy is None else [spy]
    return layers.serial(*head, layers.Conv(4, 3, padding="SAME"), layers.Relu(),
                         layers.MaxPool(2), layers.Flatten(), layers.Dropout(0.3),
                         layers.Dense(5))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(N, 6, 6, 2)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 5, N), jnp.int32)
    # Unequal chunks of the mask's sum: 8, 5, 0 and 8 rows count, so equal weights would be wrong.
    mask = jnp.asarray(np.r_[np.ones(13), np.zeros(11), np.ones(8)] > 0)
    return x, y, mask


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("loss_fn", [
    losses.softmax_cross_entropy,
    functools.partial(losses.softmax_cross_entropy, label_smoothing=0.1)])
def test_a_chunked_step_is_the_whole_batch_step(small_chunks, masked, loss_fn):
    x, y, mask = _batch()
    batch = (x, y, mask) if masked else (x, y)
    model, opt = _model(), optax.sgd(0.1, momentum=0.9)
    ts = train.create_train_state(model, opt, jax.random.key(3), (None, 6, 6, 2))
    chunked = train.make_train_step(model, loss_fn, opt)
    whole = train.make_train_step(model, loss_fn, opt, batch_slices=1)
    assert "scan" in str(jax.make_jaxpr(chunked)(ts, batch))
    assert "scan" not in str(jax.make_jaxpr(whole)(ts, batch))
    for _ in range(2):  # the second step also checks the optimizer state the first left
        (ts_c, m_c), (ts_w, m_w) = chunked(ts, batch), whole(ts, batch)
        for k in ("loss", "accuracy"):
            np.testing.assert_allclose(m_c[k], m_w[k], rtol=1e-5, err_msg=k)
        assert int(ts_c.step) == int(ts_w.step)
        for a, b in zip(jax.tree.leaves((ts_c.params, ts_c.opt_state)),
                        jax.tree.leaves((ts_w.params, ts_w.opt_state)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        ts = ts_w
    assert bool(m_c["finite"])


def test_each_chunk_runs_in_its_share_of_the_slices(small_chunks):
    seen = []
    spy = layers.Lambda(lambda x: (seen.append(x.shape[0]), x)[1], per_example=True)
    model, opt = _model(spy), optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(0), (None, 6, 6, 2))
    x, y, _ = _batch()
    seen.clear()
    train.make_train_step(model, losses.softmax_cross_entropy, opt)(ts, (x, y))
    # The 1-row trace that measures the model's bytes per example, then one chunk in 4 slices
    # of 2 rows, traced twice: for the loss dtype, then by lax.scan.
    assert seen == [1] + [2] * 8


def test_the_chunks_are_sized_by_the_models_bytes_per_example(small_chunks, monkeypatch):
    seen = []
    spy = layers.Lambda(lambda x: (seen.append(x.shape[0]), x)[1], per_example=True)
    model, opt = _model(spy), optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(0), (None, 6, 6, 2))
    size = cpu.example_bytes(
        lambda p, x: model.apply(p, ts.state, x, key=jax.random.key(0), train=True)[0],
        ts.params, jnp.zeros((1, 6, 6, 2)))
    assert size > 6 * 6 * 4 * 4  # at least the convolution's output
    x, y, _ = _batch()
    # Slices of 4 rows: 2 chunks of 16; of 2 rows: 4 chunks of 8; of 8 rows: 1 chunk, so the
    # whole batch in its 16 slices. The spy also sees the 1-row trace that measures the bytes.
    for slice_bytes, sizes in ((4 * size, [4] * 8), (2 * size + 1, [2] * 8),
                               (8 * size + 7, [2] * 16)):
        monkeypatch.setattr(cpu.slices, "SLICE_BYTES", slice_bytes)
        seen.clear()
        train.make_train_step(model, losses.softmax_cross_entropy, opt)(ts, (x, y))
        assert seen == [1] + sizes, slice_bytes


def test_a_loss_not_marked_as_a_mean_over_examples_is_not_chunked(small_chunks):
    def my_loss(logits, labels):  # could weigh examples by the batch: not chunked
        return losses.softmax_cross_entropy(logits, labels)

    assert losses.is_example_mean(losses.softmax_cross_entropy)
    assert not losses.is_example_mean(my_loss)
    model, opt = _model(), optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(0), (None, 6, 6, 2))
    x, y, _ = _batch()
    jaxpr = str(jax.make_jaxpr(train.make_train_step(model, my_loss, opt))(ts, (x, y)))
    assert "scan" not in jaxpr
    marked = losses.example_mean(my_loss)
    assert marked is my_loss and losses.is_example_mean(functools.partial(marked))
    jaxpr = str(jax.make_jaxpr(train.make_train_step(model, marked, opt))(ts, (x, y)))
    assert "scan" in jaxpr
