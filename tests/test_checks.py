"""jaxcnn.checks: what counts as an int, a real and a PRNG key."""

import jax
import numpy as np

from jaxcnn.checks import is_int, is_key, is_real


def test_ints_and_reals_count_numpy_scalars_but_not_bools():
    assert is_int(3) and is_int(np.int64(3)) and not is_int(3.0)
    assert is_real(0.1) and is_real(np.float32(0.1)) and is_real(2)
    assert not any(f(v) for f in (is_int, is_real) for v in (True, np.bool_(False), "1", None))


def test_is_key_takes_typed_keys_concrete_or_abstract_and_nothing_else():
    key = jax.random.key(0)
    assert is_key(key) and is_key(jax.random.split(key, 3))
    assert is_key(jax.eval_shape(lambda: key))  # a ShapeDtypeStruct of a key dtype
    raw = jax.random.PRNGKey(0)  # uint32 data, not a typed key
    assert not any(is_key(v) for v in (raw, jax.random.key_data(key), np.zeros(2, np.uint32),
                                       jax.ShapeDtypeStruct((2,), np.uint32), 0, None, "key"))

