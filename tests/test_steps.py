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


def _literal_mean(logits, labels, *, mask=None):
    """A user's masked mean written literally: 0 / 0 = NaN on a mask of zeros."""
    per = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)[:, 0]
    m = jnp.ones_like(per) if mask is None else mask.astype(per.dtype)
    return jnp.sum(m * per) / jnp.sum(m)


def test_a_chunk_of_padding_counts_for_nothing(small_chunks):
    """The third chunk of this mask is all padding (as in a padded last batch): the literal
    loss is NaN there, which must not reach the step; an all-zero mask changes nothing."""
    x, y, mask = _batch()
    model, opt = _model(), optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(3), (None, 6, 6, 2))
    loss = losses.example_mean(_literal_mean)
    chunked = train.make_train_step(model, loss, opt)
    whole = train.make_train_step(model, loss, opt, batch_slices=1)
    assert "scan" in str(jax.make_jaxpr(chunked)(ts, (x, y, mask)))
    (ts_c, m_c), (ts_w, m_w) = chunked(ts, (x, y, mask)), whole(ts, (x, y, mask))
    assert bool(m_c["finite"]) and bool(m_w["finite"])
    np.testing.assert_allclose(m_c["loss"], m_w["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ts_c.params), jax.tree.leaves(ts_w.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    none = jnp.zeros_like(mask)
    ts_b, m_b = train.make_train_step(model, losses.softmax_cross_entropy, opt)(ts, (x, y, none))
    assert float(m_b["loss"]) == 0.0
    for a, b in zip(jax.tree.leaves(ts_b.params), jax.tree.leaves(ts.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bfloat16_params_sum_their_chunks_in_float32(small_chunks):
    x, y, mask = _batch()
    model, opt = _model(), optax.sgd(1.0)
    ts = train.create_train_state(model, opt, jax.random.key(3), (None, 6, 6, 2))
    ts = ts._replace(params=jax.tree.map(lambda p: p.astype(jnp.bfloat16), ts.params))
    ts = ts._replace(opt_state=opt.init(ts.params))
    chunked = train.make_train_step(model, losses.softmax_cross_entropy, opt)(ts, (x, y, mask))
    whole = train.make_train_step(model, losses.softmax_cross_entropy, opt,
                                  batch_slices=1)(ts, (x, y, mask))
    for a, b in zip(jax.tree.leaves(chunked[0].params), jax.tree.leaves(whole[0].params),
                    strict=True):
        assert a.dtype == jnp.bfloat16
        # One bf16 rounding of the update apart at most (8 significant bits).
        np.testing.assert_allclose(np.float32(a), np.float32(b), rtol=2 ** -7, atol=2 ** -9)


def test_marks_on_partials_and_methods():
    class Losses:
        def ce(self, logits, labels):
            return losses.softmax_cross_entropy(logits, labels)

    marked = losses.example_mean(functools.partial(_literal_mean))
    assert losses.is_example_mean(marked)
    method = losses.example_mean(Losses().ce)
    assert losses.is_example_mean(method)
    logits = jnp.zeros((2, 3))
    np.testing.assert_allclose(method(logits, jnp.zeros(2, jnp.int32)), np.log(3), rtol=1e-6)
