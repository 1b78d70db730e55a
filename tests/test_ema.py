"""The moving average of the parameters: its recursion, what the loop evaluates with it, and
what jaxcnn.load predicts with."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import data, experiment, train
from jaxcnn import layers as L
from jaxcnn.config import Config
from jaxcnn.ema import ema_of, ema_params


def test_the_average_follows_its_recursion_and_leaves_the_updates_alone():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
    plain, averaged = optax.sgd(0.1), optax.chain(optax.sgd(0.1), ema_params(0.8))
    s_plain, s_avg = plain.init(params), averaged.init(params)
    p_plain, p_avg, want = params, params, np.asarray(params["w"], np.float64)
    for _ in range(5):
        g = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
        u_plain, s_plain = plain.update(g, s_plain, p_plain)
        u_avg, s_avg = averaged.update(g, s_avg, p_avg)
        np.testing.assert_array_equal(np.asarray(u_avg["w"]), np.asarray(u_plain["w"]))
        p_plain, p_avg = optax.apply_updates(p_plain, u_plain), optax.apply_updates(p_avg, u_avg)
        want = 0.8 * want + 0.2 * np.asarray(p_avg["w"], np.float64)
    np.testing.assert_allclose(np.asarray(ema_of(s_avg)["w"]), want, rtol=1e-6)
    assert ema_of(s_plain) is None
    with pytest.raises(ValueError, match=r"decay must lie in \(0, 1\), got 1.0"):
        ema_params(1.0)


def test_the_loop_evaluates_the_average_and_load_predicts_with_it(tmp_path):
    cfg = Config(experiment="ema", dataset="digits", model="simple_cnn", epochs=2,
                 batch_size=64, ema_decay=0.9, runs_dir=str(tmp_path))
    result = experiment.run(cfg, progress=False)
    trained = jaxcnn.load(result.run_dir, checkpoint="last")
    with np.load(trained.checkpoint) as f:
        ema_keys = [k for k in f.files if "/ema/" in k]
        assert ema_keys
        w = next(k for k in ema_keys if k.endswith("/ema/dense2/w"))
        np.testing.assert_array_equal(np.asarray(trained.params["dense2"]["w"]), f[w])
        assert not np.array_equal(f[w], f["params/dense2/w"])
    # the run's test accuracy is the average's: predict with it gives the same accuracy
    test = data.load("digits").test
    acc = float(np.mean(trained.predict(test.images).argmax(1) == test.labels))
    assert acc == pytest.approx(result.final["test_accuracy"], abs=1e-6)


def test_fit_evaluates_the_average_of_an_optimizer_that_keeps_one():
    split = data.load("digits").train
    tr, val = data.train_val_split(split, 0.2, seed=0)
    model = L.serial(L.Flatten(), L.Dense(10))
    loop = train.Loop(model, optax.chain(optax.sgd(0.5), ema_params(0.5)), tr, epochs=1,
                      batch_size=32, val=val)
    loop.run()
    avg = ema_of(loop.ts.opt_state)
    assert loop.eval_params() is avg
    logits = np.asarray(model.apply(avg, {}, val.images)[0])
    want = float(np.mean(logits.argmax(1) == val.labels))
    assert loop.history[-1]["val_accuracy"] == pytest.approx(want, abs=1e-6)
    assert not np.allclose(np.asarray(avg["dense1"]["w"]),
                           np.asarray(loop.ts.params["dense1"]["w"]))
    jax.block_until_ready(loop.ts)
