"""Training steps, drivers and evaluation against hand computations."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import cpu, data, layers, losses, models, steps, train


def _toy(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
    y = (x[:, :3].mean(axis=(1, 2, 3)) > x[:, 3:].mean(axis=(1, 2, 3))).astype(np.int32)
    return data.Split(x, y)


def _tiny_model():
    return layers.serial(layers.Conv(4, 3), layers.Relu(), layers.Flatten(), layers.Dropout(0.2),
                         layers.Dense(2))


def _state(model, opt, split, seed=0):
    return train.create_train_state(model, opt, jax.random.key(seed),
                                    (None, *split.images.shape[1:]))


def test_sgd_step_matches_hand_derived_update():
    # A dense layer with the 1/2 MSE loss: dE/dW = X^T (XW + b - T) / (N * K), dE/db likewise.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    t = rng.normal(size=(8, 2)).astype(np.float32)
    model = layers.Dense(2)
    opt = optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(0), (None, 3))
    w, b = np.asarray(ts.params["w"], np.float64), np.asarray(ts.params["b"], np.float64)
    step = train.make_train_step(model, losses.mse, opt)
    ts2, metrics = step(ts, (jnp.asarray(x), jnp.asarray(t)))
    err = x @ w + b - t
    np.testing.assert_allclose(metrics["loss"], 0.5 * np.mean(err**2), rtol=1e-5)
    np.testing.assert_allclose(ts2.params["w"], w - 0.1 * x.T @ err / err.size, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(ts2.params["b"], b - 0.1 * err.sum(0) / err.size, rtol=1e-5,
                               atol=1e-6)
    assert int(ts2.step) == 1 and bool(metrics["finite"])


def test_scan_and_loop_drivers_give_the_same_parameters():
    split = _toy()
    model = _tiny_model()
    opt = optax.sgd(0.05, momentum=0.9)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, jit=False)
    results = {}
    for driver in ("scan", "loop"):
        run = train.make_epoch_fn(step, split.images, split.labels, 16, driver=driver)
        ts, metrics = run(_state(model, opt, split), seed=3, epoch=0)
        results[driver] = (ts, metrics)
        assert metrics["loss"].shape == (96 // 16,)
    (a, ma), (b, mb) = results["scan"], results["loop"]
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    np.testing.assert_array_equal(ma["loss"], mb["loss"])
    assert int(a.step) == int(b.step) == 6


@pytest.mark.parametrize("driver", ["scan", "loop"])
def test_an_epoch_split_into_calls_or_stopped_and_continued_is_bit_identical(driver):
    """Scans of 4 steps (4, 4, 4 and a rest of 1: 13 steps), and an epoch stopped after its
    first call then continued with ``start``, end exactly where one whole-epoch scan does."""
    split = _toy(n=208)
    model = _tiny_model()
    opt = optax.sgd(0.05, momentum=0.9)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, jit=False)
    ts0 = _state(model, opt, split)
    whole, mw = train.make_epoch_fn(step, split.images, split.labels, 16, driver="scan")(
        ts0, seed=1, epoch=2)
    run = train.make_epoch_fn(step, split.images, split.labels, 16, driver=driver,
                              steps_per_call=4)
    split_ts, ms = run(ts0, seed=1, epoch=2)
    asked = []

    def stop():
        asked.append(1)
        return True

    part, mp = run(ts0, seed=1, epoch=2, stop=stop)
    done = len(mp["loss"])
    # Heard within two calls of 4 steps (scan: one call queued behind the one running).
    assert asked and 1 <= done <= (8 if driver == "scan" else 1) and int(part.step) == done
    rest, mr = run(part, seed=1, epoch=2, start=done)
    for ts, m in ((split_ts, ms), (rest, {k: np.concatenate([mp[k], mr[k]]) for k in mp})):
        assert int(ts.step) == 13
        jax.tree.map(np.testing.assert_array_equal, ts.params, whole.params)
        jax.tree.map(np.testing.assert_array_equal, ts.opt_state, whole.opt_state)
        np.testing.assert_array_equal(m["loss"], mw["loss"])
    with pytest.raises(ValueError, match=r"start must be an int in \[0, 13\)"):
        run(ts0, seed=1, epoch=2, start=13)
    with pytest.raises(ValueError, match="steps_per_call must be a positive int"):
        train.make_epoch_fn(step, split.images, split.labels, 16, steps_per_call=0)


def test_a_scanned_epoch_compiles_one_program_for_every_call_length():
    """Calls of 4 steps with a rest of 1, a stopped epoch and its continuation from step 5 run
    the program ``run.compile`` built: nothing compiles after it."""
    split = _toy(n=208)
    model = _tiny_model()
    opt = optax.sgd(0.05, momentum=0.9)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, jit=False)
    run = train.make_epoch_fn(step, split.images, split.labels, 16, driver="scan",
                              steps_per_call=4)
    ts0 = _state(model, opt, split)
    run.compile(ts0)
    compiled = []

    def listen(event, seconds, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        ts, m = run(ts0, seed=1, epoch=0)
        rest, mr = run(ts0, seed=1, epoch=1, start=5)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiled == []
    assert m["loss"].shape == (13,) and mr["loss"].shape == (8,)
    assert np.all(m["loss"] > 0) and np.all(mr["loss"] > 0)  # no padding step's zeros
    assert int(ts.step) == 13 and int(rest.step) == 8


@pytest.mark.parametrize("driver", ["scan", "loop"])
def test_progress_gets_each_finished_call_and_the_result_the_rest(driver):
    """13 steps in calls of 4 (scan) or 1 (loop): ``progress`` sees every call but the last,
    in order, as NumPy arrays equal to the result's first steps; training is unchanged."""
    split = _toy(n=208)
    model = _tiny_model()
    opt = optax.sgd(0.05, momentum=0.9)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, jit=False)
    run = train.make_epoch_fn(step, split.images, split.labels, 16, driver=driver,
                              steps_per_call=4)
    ts0 = _state(model, opt, split)
    fed: list[dict] = []
    ts, m = run(ts0, seed=1, epoch=0, progress=fed.append)
    plain, mp = run(ts0, seed=1, epoch=0)
    sizes = [len(f["loss"]) for f in fed]
    assert sizes == ([4, 4, 4] if driver == "scan" else [1] * 12)
    assert all(isinstance(f["loss"], np.ndarray) and set(f) == set(m) for f in fed)
    for k in m:
        np.testing.assert_array_equal(np.concatenate([f[k] for f in fed]), m[k][:12])
    np.testing.assert_array_equal(m["loss"], mp["loss"])
    jax.tree.map(np.testing.assert_array_equal, ts.params, plain.params)


def test_training_is_deterministic_for_a_seed_and_differs_across_seeds():
    split = _toy()
    model = _tiny_model()
    opt = optax.adam(1e-2)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, jit=False)
    run = train.make_epoch_fn(step, split.images, split.labels, 16)
    one, _ = run(_state(model, opt, split), seed=0, epoch=0)
    two, _ = run(_state(model, opt, split), seed=0, epoch=0)
    other, _ = run(_state(model, opt, split), seed=0, epoch=1)
    jax.tree.map(np.testing.assert_array_equal, one.params, two.params)
    assert not np.array_equal(one.params["dense1"]["w"], other.params["dense1"]["w"])


def test_nonfinite_step_changes_nothing_and_halts_the_epoch():
    split = _toy()
    bad = data.Split(split.images.copy(), split.labels)
    bad.images[40] = np.nan  # lands in some batch of the epoch
    model = _tiny_model()
    opt = optax.sgd(0.05)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, jit=False)
    ts0 = _state(model, opt, split)
    run = train.make_epoch_fn(step, bad.images, bad.labels, 16, driver="scan")
    ts, metrics = run(ts0, seed=0, epoch=0)
    finite = metrics["finite"]
    first_bad = int(np.argmin(finite))
    assert not finite[first_bad] and finite[:first_bad].all()
    assert int(ts.step) == first_bad + 1  # frozen after the bad step
    # The state equals running only the good steps before it.
    order = data.batch_indices(96, 16, seed=0, epoch=0)
    assert 40 in order[first_bad]
    good = ts0
    jstep = jax.jit(step)
    for rows in order[:first_bad]:
        good, _ = jstep(good, (split.images[rows], split.labels[rows]))
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-8), ts.params,
                 good.params)
    # A single step on a NaN batch leaves params exactly unchanged.
    rows = order[first_bad]
    after, m = jstep(good, (bad.images[rows], bad.labels[rows]))
    assert not bool(m["finite"])
    jax.tree.map(np.testing.assert_array_equal, after.params, good.params)


def test_learning_rate_is_reported_from_an_injected_schedule():
    split = _toy()
    schedule = optax.linear_schedule(0.1, 0.0, 6)
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    model = _tiny_model()
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt, jit=False)
    run = train.make_epoch_fn(step, split.images, split.labels, 16)
    _, metrics = run(_state(model, opt, split), seed=0, epoch=0)
    np.testing.assert_allclose(metrics["learning_rate"], 0.1 - 0.1 * np.arange(6) / 6, rtol=1e-6)
    assert train.learning_rate(optax.sgd(0.1).init({"w": jnp.zeros(2)})) is None


def test_evaluate_counts_every_example_once_with_a_ragged_last_batch():
    split = _toy(n=50)
    model = _tiny_model()
    ts = _state(model, optax.sgd(0.1), split)
    result = train.evaluate(train.make_eval_step(model), ts.params, ts.state, split,
                            batch_size=16)
    logits, _ = model.apply(ts.params, ts.state, jnp.asarray(split.images))
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    nll = -(z - np.log(np.exp(z).sum(-1, keepdims=True)))[np.arange(50), split.labels]
    np.testing.assert_allclose(result["loss"], nll.mean(), rtol=1e-5)
    np.testing.assert_array_equal(result["predictions"], logits.argmax(-1))
    np.testing.assert_allclose(result["accuracy"], np.mean(logits.argmax(-1) == split.labels))


def test_batchnorm_running_statistics_are_carried_by_the_train_state():
    split = _toy()
    model = layers.serial(layers.Conv(3, 3), layers.BatchNorm(), layers.Flatten(),
                          layers.Dense(2))
    opt = optax.sgd(0.0)
    ts = _state(model, opt, split)
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt)
    ts2, _ = step(ts, (split.images[:32], split.labels[:32]))
    y, _ = layers.Conv(3, 3).apply(ts.params["conv1"], {}, jnp.asarray(split.images[:32]))
    want_mean = 0.1 * np.asarray(y).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(ts2.state["batchnorm1"]["mean"], want_mean, rtol=1e-4, atol=1e-6)


def test_fit_learns_and_stops_on_tolerance_and_patience():
    split = _toy(n=192)
    ts, history = train.fit(_tiny_model(), optax.adam(3e-2), split, epochs=30, batch_size=32,
                            val=split, loss_tolerance=0.25)
    assert history[-1]["train_loss"] < 0.25 and len(history) < 30
    assert history[-1]["val_accuracy"] > 0.85
    rule = train.EarlyStopping(metric="val_accuracy", mode="max", patience=2)
    flat = [{"val_accuracy": v} for v in (0.5, 0.7, 0.7, 0.69)]
    assert train.should_stop(rule, flat) and not train.should_stop(rule, flat[:3])
    assert not train.should_stop(rule, flat[:3] + [{"val_accuracy": 0.71}])


def test_fit_raises_on_a_diverging_loss():
    split = _toy()
    with pytest.raises(FloatingPointError, match=r"fit: the loss became .* at step \d+"):
        train.fit(_tiny_model(), optax.sgd(1e9), split, epochs=3, batch_size=16)


def _ce_without_mask(logits, labels):
    """A user's own loss, written without jaxcnn's mask keyword."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_a_loss_without_a_mask_keyword_trains_and_evaluates():
    split = _toy(n=50)  # evaluated in batches of 16: a ragged last batch of 2
    model = _tiny_model()
    opt = optax.sgd(0.1)
    ts = _state(model, opt, split)
    batch = (jnp.asarray(split.images[:16]), jnp.asarray(split.labels[:16]))
    mine = train.make_train_step(model, _ce_without_mask, opt, batch_slices=1)(ts, batch)
    ours = train.make_train_step(model, losses.softmax_cross_entropy, opt, batch_slices=1)(
        ts, batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 mine[0].params, ours[0].params)
    assert not steps.takes_mask(_ce_without_mask) and steps.takes_mask(losses.mse)
    got = train.evaluate(train.make_eval_step(model, _ce_without_mask), ts.params, ts.state,
                         split, batch_size=16)
    want = train.evaluate(train.make_eval_step(model), ts.params, ts.state, split,
                          batch_size=16)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
    assert got["accuracy"] == want["accuracy"]
    np.testing.assert_array_equal(got["predictions"], want["predictions"])
    eval_step = train.make_eval_step(model, _ce_without_mask)
    with pytest.raises(TypeError, match="takes no mask keyword"):
        eval_step(ts.params, ts.state, (*batch, jnp.ones(16)))


def test_a_loss_whose_mask_has_no_default_gets_mask_none():
    split = _toy(n=32)
    model = _tiny_model()
    opt = optax.sgd(0.1)
    ts = _state(model, opt, split)
    seen = []

    def my_loss(logits, labels, mask):
        seen.append(mask)
        return losses.softmax_cross_entropy(logits, labels, mask=mask)

    batch = (jnp.asarray(split.images[:16]), jnp.asarray(split.labels[:16]))
    _, m = train.make_train_step(model, my_loss, opt, batch_slices=1)(ts, batch)
    want = train.make_train_step(model, losses.softmax_cross_entropy, opt, batch_slices=1)(
        ts, batch)[1]
    assert seen[0] is None and float(m["loss"]) == pytest.approx(float(want["loss"]), rel=1e-6)
    got = train.evaluate(train.make_eval_step(model, my_loss), ts.params, ts.state, split, 10)
    assert got["loss"] == pytest.approx(train.evaluate(
        train.make_eval_step(model), ts.params, ts.state, split, 10)["loss"], rel=1e-6)


def test_optimizers_that_need_the_loss_get_it():
    # polyak_sgd steps by min(max_lr, (f - f*) / (|g|^2 + eps)) * g: the loss value is needed.
    split = _toy(n=32)
    model = layers.serial(layers.Flatten(), layers.Dense(2))
    batch = (jnp.asarray(split.images), jnp.asarray(split.labels))
    opt = optax.polyak_sgd(max_learning_rate=10.0)
    ts = _state(model, opt, split)

    def loss(p):
        return losses.softmax_cross_entropy(model.apply(p, {}, batch[0])[0], batch[1])

    value, grads = jax.value_and_grad(loss)(ts.params)
    sq = sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in jax.tree.leaves(grads))
    lr = min(10.0, float(value) / sq)
    new, _ = train.make_train_step(model, losses.softmax_cross_entropy, opt)(ts, batch)
    jax.tree.map(lambda n, p, g: np.testing.assert_allclose(n, p - lr * g, rtol=1e-4,
                                                            atol=1e-6),
                 new.params, ts.params, grads)
    # L-BFGS (value, grad and value_fn for its line search) and a plateau schedule run too.
    for opt in (optax.lbfgs(), optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau())):
        ts = _state(model, opt, split)
        step = train.make_train_step(model, losses.softmax_cross_entropy, opt)
        first = float(loss(ts.params))
        for _ in range(5):
            ts, m = step(ts, batch)
        assert bool(m["finite"]) and float(loss(ts.params)) < first


def test_fit_with_mse_on_one_hot_targets_reports_their_accuracy():
    split = _toy(n=64)
    one_hot = data.Split(split.images, np.eye(2, dtype=np.float32)[split.labels])
    model = layers.serial(_tiny_model(), layers.Softmax())
    ts, history = train.fit(model, optax.adam(1e-2), one_hot, epochs=2, batch_size=16,
                            loss_fn=losses.mse, val=one_hot)
    probs, _ = model.apply(ts.params, ts.state, jnp.asarray(split.images))
    want = np.mean(np.asarray(probs).argmax(-1) == split.labels)
    assert history[-1]["val_accuracy"] == pytest.approx(want)
    assert 0.0 <= history[-1]["train_accuracy"] <= 1.0
    half_sq = 0.5 * np.mean((np.asarray(probs) - one_hot.labels) ** 2)
    assert history[-1]["val_loss"] == pytest.approx(half_sq, rel=1e-5)


@pytest.mark.parametrize(("labels", "match"), [
    (lambda y: y - 1, r"train labels must be class indices in \[0, 2\) .* from -1 to 0"),
    (lambda y: y + 1, r"train labels must be class indices in \[0, 2\) .* from 1 to 2"),
])
def test_fit_refuses_labels_outside_the_models_classes(labels, match):
    split = _toy()
    with pytest.raises(ValueError, match=match):
        train.fit(_tiny_model(), optax.sgd(0.1), data.Split(split.images, labels(split.labels)),
                  epochs=1, batch_size=16)


def test_numpy_integers_for_epochs_batch_and_patience():
    split = _toy()
    rule = train.EarlyStopping("train_loss", "min", patience=np.int8(2))
    assert type(rule.patience) is int
    a = train.fit(_tiny_model(), optax.sgd(0.1), split, epochs=np.int64(2),
                  batch_size=np.uint8(48), early_stopping=rule)[1]
    b = train.fit(_tiny_model(), optax.sgd(0.1), split, epochs=2, batch_size=48,
                  early_stopping=train.EarlyStopping("train_loss", "min", patience=2))[1]
    times = ("epoch_time_s", "images_per_second")  # the wall clock's, never equal
    assert [{k: v for k, v in h.items() if k not in times} for h in a] == [
        {k: v for k, v in h.items() if k not in times} for h in b]
    assert [h["epoch"] for h in a] == [1, 2] and [h["step"] for h in a] == [2, 4]


def test_fit_refuses_early_stopping_on_a_metric_it_does_not_report():
    split = _toy()
    for rule, val in ((train.EarlyStopping("val_accuracy"), None),
                      (train.EarlyStopping("val_acc"), split)):
        with pytest.raises(ValueError, match=f"early_stopping watches '{rule.metric}'"):
            train.fit(_tiny_model(), optax.sgd(0.1), split, epochs=1, batch_size=16, val=val,
                      early_stopping=rule)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"driver": "fast"}, r"driver must be 'auto', 'scan' or 'loop', got 'fast'"),
    ({"batch_size": 0}, r"batch_size must be a positive int, got 0"),
    ({"batch_size": 1000}, r"batch_size \(1000\) is larger than the 96 training examples"),
])
def test_epoch_fn_refuses_bad_arguments(kwargs, match):
    split = _toy()
    opt = optax.sgd(0.1)
    step = train.make_train_step(_tiny_model(), losses.softmax_cross_entropy, opt, jit=False)
    args = {"batch_size": 16} | kwargs
    bs = args.pop("batch_size")
    with pytest.raises(ValueError, match=match):
        train.make_epoch_fn(step, split.images, split.labels, bs, **args)


def test_lenet5_trains_on_digits_sized_inputs():
    model = models.lenet5()
    ts = train.create_train_state(model, optax.sgd(0.1), jax.random.key(0), (None, 28, 28, 1))
    step = train.make_train_step(model, losses.softmax_cross_entropy, optax.sgd(0.1))
    x = jnp.zeros((4, 28, 28, 1))
    _, m = step(ts, (x, jnp.zeros(4, jnp.int32)))
    np.testing.assert_allclose(m["loss"], losses.softmax_cross_entropy(
        model.apply(ts.params, ts.state, x)[0], jnp.zeros(4, jnp.int32)), rtol=1e-6)


def _per_example_model():
    return layers.serial(layers.Conv(4, 3, padding="SAME"), layers.Relu(), layers.MaxPool(2),
                         layers.Conv(6, 3), layers.Tanh(), layers.Flatten(), layers.Dense(3))


@pytest.mark.parametrize(("n", "slices"), [(12, 4), (10, 4), (7, 3)])
def test_batch_slices_give_the_whole_batch_gradient(n, slices):
    # Reference: the loss and gradient of the whole batch at once (slices=1), incl. a mask.
    rng = np.random.default_rng(n)
    x = jnp.asarray(rng.normal(size=(n, 6, 6, 2)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, n), jnp.int32)
    mask = jnp.asarray(np.arange(n) < n - 2)
    model, opt = _per_example_model(), optax.sgd(0.1, momentum=0.9)
    ts = train.create_train_state(model, opt, jax.random.key(1), (None, 6, 6, 2))
    out = {}
    for k in (1, slices):
        step = train.make_train_step(model, losses.softmax_cross_entropy, opt, batch_slices=k)
        out[k] = step(ts, (x, y, mask))
    (ts1, m1), (tsk, mk) = out[1], out[slices]
    np.testing.assert_allclose(mk["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(mk["accuracy"], m1["accuracy"])
    for a, b in zip(jax.tree.leaves(tsk.params), jax.tree.leaves(ts1.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.array_equal(ts1.params["conv1"]["w"], ts.params["conv1"]["w"])


@pytest.mark.parametrize(("rows", "table"), [
    (16, ((64, 4), (127, 4), (128, 8), (255, 8), (256, 16), (1024, 16))),
    (32, ((64, 4), (127, 4), (128, 4), (255, 4), (256, 8), (511, 8), (512, 16), (4096, 16)))])
def test_batch_slices_auto_splits_per_example_models_on_one_cpu(monkeypatch, rows, table):
    monkeypatch.setenv("JAXCNN_CPU", "on")  # as on a CPU, whatever runs the tests
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", rows)
    lenet = models.lenet5()
    assert cpu.MAX_SLICES == 16 and cpu.MIN_SLICED_BATCH == 64
    for batch, slices in table:
        assert train.batch_slices_for(lenet, batch) == slices, batch
        assert train.batch_slices_for(lenet, np.int64(batch)) == slices, batch
    assert train.batch_slices_for(lenet, 63) == 1  # small batches gain nothing
    assert train.batch_slices_for(models.resnet20(), 128) == 1  # BatchNorm mixes examples
    assert train.batch_slices_for(_tiny_model(), 128) == dict(table)[128]  # Dropout too
    assert train.batch_slices_for(lenet, 128, 3) == 3
    assert train.batch_slices_for(lenet, 2, 3) == 2
    monkeypatch.setenv("JAXCNN_CPU", "off")  # XLA's own convolutions (GPU, TPU): whole
    assert train.batch_slices_for(lenet, 128) == 1


@pytest.mark.parametrize(("n", "batch_slices", "sizes"), [
    (64, "auto", [16, 16, 16, 16]), (66, "auto", [16, 17, 16, 17]), (63, "auto", [63]),
    (128, "auto", [16] * 8), (64, 1, [64]), (10, 3, [3, 3, 4])])
def test_the_step_runs_the_model_on_each_slice(monkeypatch, n, batch_slices, sizes):
    monkeypatch.setenv("JAXCNN_CPU", "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)  # the AVX2 rule, whatever the host
    seen = []
    # Asking its slice's position makes every slice trace the model afresh.
    spy = layers.Lambda(lambda x: (seen.append(x.shape[0]), cpu.slice_position(), x)[2],
                        per_example=True)
    model = layers.serial(spy, layers.Flatten(), layers.Dense(2))
    opt = optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(0), (None, 3))
    step = train.make_train_step(model, losses.softmax_cross_entropy, opt,
                                 batch_slices=batch_slices)
    seen.clear()
    step(ts, (jnp.ones((n, 3)), jnp.zeros((n,), jnp.int32)))
    assert seen == sizes  # each slice once: the model's own serial does not cut them again


def test_auto_lets_a_batchnorm_model_slice_its_runs_and_one_keeps_it_whole(monkeypatch):
    """With "auto", a model that mixes examples computes its runs of per-example layers in
    slices (BatchNorm on the whole batch); batch_slices=1 runs it whole; both give the same
    step up to float rounding, running statistics included."""
    monkeypatch.setenv("JAXCNN_CPU", "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", 16)
    seen = []
    spy = layers.Lambda(lambda x: (seen.append(x.shape[0]), x)[1], per_example=True)
    model = layers.serial(layers.Conv(4, 3), spy, layers.BatchNorm(), layers.Relu(),
                          layers.Flatten(), layers.Dense(3))
    opt = optax.sgd(0.1)
    ts = train.create_train_state(model, opt, jax.random.key(0), (None, 6, 6, 1))
    batch = (jax.random.normal(jax.random.key(1), (128, 6, 6, 1)), jnp.arange(128) % 3)
    got = {}
    for slices in ("auto", 1):
        seen.clear()
        step = train.make_train_step(model, losses.softmax_cross_entropy, opt,
                                     batch_slices=slices)
        got[slices] = step(ts, batch)
        assert set(seen) == ({128 // cpu.MAX_RUN_SLICES} if slices == "auto" else {128})
    (a, ma), (b, mb) = got["auto"], got[1]
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves((a.params, a.state)), jax.tree.leaves((b.params, b.state)),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_auto_slices_train_a_model_that_is_spatial_again_after_global_pooling(monkeypatch):
    monkeypatch.setenv("JAXCNN_CPU", "on")
    model = layers.serial(layers.Conv(4, 3), layers.Relu(), layers.GlobalAvgPool(),
                          layers.Lambda(lambda x: x[:, None, None, :], per_example=True),
                          layers.Conv(3, 1), layers.Flatten())
    opt = optax.sgd(0.1)
    x = jax.random.normal(jax.random.key(1), (64, 6, 6, 1))
    y = jnp.arange(64) % 3
    ts = train.create_train_state(model, opt, jax.random.key(0), (None, 6, 6, 1))
    loss = lambda p: losses.softmax_cross_entropy(model.apply(p, {}, x)[0], y)  # noqa: E731
    want = jax.tree.map(lambda p, g: p - 0.1 * g, ts.params, jax.grad(loss)(ts.params))
    assert train.batch_slices_for(model, 64) == 4
    got, _ = train.make_train_step(model, losses.softmax_cross_entropy, opt)(ts, (x, y))
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batch_slices_refuse_models_that_mix_examples():
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"layer 'serial1/batchnorm1' \(BatchNorm\)"):
        train.make_train_step(layers.serial(layers.Conv(2, 1), layers.serial(
            layers.Relu(), layers.BatchNorm())), losses.mse, opt, batch_slices=2)
    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="batch_slices must be 'auto' or an int >= 1"):
            train.make_train_step(_per_example_model(), losses.mse, opt, batch_slices=bad)
    train.make_train_step(models.resnet20(), losses.mse, opt, batch_slices=1)  # whole: fine
    with pytest.raises(ValueError, match=r"layer 'batchnorm1' \(BatchNorm\) is not per-example"):
        train.batch_slices_for(models.resnet20(), 128, 4)
