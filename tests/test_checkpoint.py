"""Checkpoints: exact round trips, structure and shape checks, atomic files and fallbacks."""

import json

import jax
import numpy as np
import optax
import pytest

from jaxcnn import checkpoint as ckpt
from jaxcnn import train
from jaxcnn.checks import is_key
from jaxcnn.errors import CheckpointError


def _state(shapes=None, seed=0):
    """A real TrainState (params, optax state with injected lr, step, PRNG key) over small
    hand-made params ``{layer: {"w": shape, "b": (shape[-1],)}}``, built without compiling."""
    shapes = shapes or {"conv1": (3, 3, 1, 4), "dense1": (16, 10)}
    rng = np.random.default_rng(seed)
    params = {name: {"w": rng.normal(size=shape).astype(np.float32),
                     "b": rng.normal(size=shape[-1:]).astype(np.float32)}
              for name, shape in shapes.items()}
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    return train.TrainState(params, {}, opt.init(params), np.int32(seed), jax.random.key(seed))


def _assert_trees_equal(a, b):
    fa, fb = ckpt.flatten(a), ckpt.flatten(b)
    assert list(fa) == list(fb)
    for k in fa:
        x, y = fa[k], fb[k]
        if is_key(x):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=k)


def test_round_trip_is_exact_including_prng_key(tmp_path):
    ts = _state(seed=3)
    ckpt.save(tmp_path, "ckpt-000001", ts, {"epoch": 1, "history": [{"a": 0.5}]})
    restored, meta = ckpt.restore(ckpt.latest(tmp_path), _state(seed=0))
    _assert_trees_equal(restored, ts)
    assert jax.dtypes.issubdtype(restored.key.dtype, jax.dtypes.prng_key)
    assert meta["epoch"] == 1 and meta["history"] == [{"a": 0.5}]
    assert meta["_checkpoint"]["key_leaves"] == ["key"]


def test_leaves_are_keyed_by_tree_path(tmp_path):
    npz = ckpt.save(tmp_path, "c", _state(), {})
    with np.load(npz) as f:
        names = set(f.files)
    assert {"params/conv1/w", "params/dense1/b", "step", "key",
            "opt_state/hyperparams/learning_rate"} <= names


def test_different_model_names_first_param_whose_shape_differs(tmp_path):
    ckpt.save(tmp_path, "c", _state({"conv1": (5, 5, 1, 6), "dense1": (8, 10)}), {})
    with pytest.raises(CheckpointError,
                       match=r"params/conv1/w: checkpoint \(5, 5, 1, 6\), model \(3, 3, 1, 6\)"):
        ckpt.restore(tmp_path / "c.npz", _state({"conv1": (3, 3, 1, 6), "dense1": (8, 10)}))


def test_missing_and_extra_leaves_are_named(tmp_path):
    small = {"dense1": (4, 10)}
    big = {"dense1": (4, 10), "dense2": (10, 10)}
    ckpt.save(tmp_path, "small", _state(small), {})
    with pytest.raises(CheckpointError, match=r"params/dense2/b: missing from the checkpoint"):
        ckpt.restore(tmp_path / "small.npz", _state(big))
    ckpt.save(tmp_path, "big", _state(big), {})
    with pytest.raises(CheckpointError, match=r"params/dense2/b: checkpoint \(10,\), not in the "
                                              r"model"):
        ckpt.restore(tmp_path / "big.npz", _state(small))


def test_truncated_newest_and_leftover_temp_fall_back_to_previous(tmp_path):
    tree = {"w": np.arange(4.0, dtype=np.float32)}
    ckpt.save(tmp_path, "ckpt-000001", tree, {"epoch": 1})
    ckpt.save(tmp_path, "ckpt-000002", {"w": tree["w"] + 1}, {"epoch": 2})
    assert ckpt.latest(tmp_path).name == "ckpt-000002.npz"
    newest = tmp_path / "ckpt-000002.npz"
    newest.write_bytes(newest.read_bytes()[:100])  # a kill mid-write of a non-atomic writer
    (tmp_path / ".tmp-ckpt-000003.npz.abcd").write_bytes(b"partial")
    assert not ckpt.is_complete(newest)
    assert ckpt.latest(tmp_path).name == "ckpt-000001.npz"
    restored, meta = ckpt.restore(ckpt.latest(tmp_path), {"w": np.zeros(4, np.float32)})
    assert meta["epoch"] == 1 and restored["w"].tolist() == [0, 1, 2, 3]
    with pytest.raises(CheckpointError, match="truncated or altered"):
        ckpt.restore(newest, {"w": np.zeros(4, np.float32)})
    ckpt.save(tmp_path, "ckpt-000003", tree, {"epoch": 3})  # cleans the stray temp file
    assert not list(tmp_path.glob(".tmp-*"))


def test_latest_file_naming_a_missing_checkpoint_is_not_trusted(tmp_path):
    ckpt.save(tmp_path, "ckpt-000001", {"w": np.ones(2)}, {"epoch": 1})
    (tmp_path / "latest").write_text("ckpt-000009\n")
    assert ckpt.latest(tmp_path).name == "ckpt-000001.npz"
    assert ckpt.latest(tmp_path / "nothing") is None


def test_metadata_without_npz_or_json_is_incomplete(tmp_path):
    ckpt.save(tmp_path, "a", {"w": np.ones(2)}, {})
    (tmp_path / "a.json").write_text(json.dumps({"epoch": 1}))  # no checksum record
    assert not ckpt.is_complete(tmp_path / "a.npz")
    assert ckpt.latest(tmp_path) is None


def test_prune_keeps_newest_and_protected(tmp_path):
    for i in range(1, 6):
        ckpt.save(tmp_path, f"ckpt-{i:06d}", {"w": np.full(2, i)}, {"epoch": i})
    removed = ckpt.prune(tmp_path, 2, protect=["ckpt-000002"])
    assert sorted(p.name for p in removed) == ["ckpt-000001.npz", "ckpt-000003.npz"]
    assert [p.stem for p in ckpt.checkpoints(tmp_path)] == ["ckpt-000002", "ckpt-000004",
                                                             "ckpt-000005"]


def test_bad_checkpoint_name_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="must be letters"):
        ckpt.save(tmp_path, "../x", {"w": np.ones(1)}, {})


def test_restore_into_an_abstract_template(tmp_path):
    ts = _state(seed=2)
    ckpt.save(tmp_path, "c", ts, {})
    abstract = jax.eval_shape(lambda: _state(seed=0))
    restored, _ = ckpt.restore(tmp_path / "c.npz", abstract)
    _assert_trees_equal(restored, ts)
