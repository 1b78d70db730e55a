"""jaxcnn.cpu.slices: how many slices a training batch is computed in on this host."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import cpu


def test_slice_rows_follow_the_vector_width(monkeypatch, proc_cpu_flags):
    assert cpu.slice_rows({"AVX512F": True, "AVX2": True}) == 32
    assert cpu.slice_rows({"AVX512F": False, "AVX2": True}) == 16
    assert cpu.slice_rows({}) == 16  # e.g. an ARM CPU
    # Without a table, NumPy's runtime one is read: the host's, edited here to each case.
    try:
        table = importlib.import_module("numpy._core._multiarray_umath").__cpu_features__
    except (ImportError, AttributeError):  # NumPy 1.x
        table = importlib.import_module("numpy.core._multiarray_umath").__cpu_features__
    for avx512, rows in ((True, 32), (False, 16)):
        with monkeypatch.context() as patched:
            patched.setitem(table, "AVX512F", avx512)
            assert cpu.slice_rows() == rows
    if not proc_cpu_flags:
        pytest.skip("no /proc/cpuinfo flags to check the host's rows against")
    # The host's own answer, independently of NumPy's table, for the function and the constant
    # the step uses.
    want = 32 if "avx512f" in proc_cpu_flags else 16
    assert cpu.slice_rows() == want
    assert cpu.SLICE_ROWS == want


@pytest.mark.parametrize(("rows", "table"), [
    (16, ((63, 1), (64, 4), (127, 4), (128, 8), (255, 8), (256, 16), (1024, 16))),
    (32, ((63, 1), (64, 4), (255, 4), (256, 8), (511, 8), (512, 16), (4096, 16)))])
def test_batch_slices_by_rows_a_slice(monkeypatch, rows, table):
    """The largest power of two of slices of at least ``rows`` rows, 4 to 16, from batch 64."""
    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", rows)
    for batch, want in table:
        assert cpu.batch_slices(batch) == want, batch
        assert cpu.batch_slices(np.int64(batch)) == want, batch
    with cpu.whole_batch():
        assert cpu.batch_slices(1024) == 1
    assert cpu.batch_slices(None) == 1
    monkeypatch.setenv(cpu.ENV_VAR, "off")
    assert cpu.batch_slices(1024) == 1


def test_concat_slices_traces_fn_once_per_slice_shape_unless_it_reads_the_position():
    """Slices of 2, 3, 2 and 3 rows: a function that ignores its position is traced once per
    shape (twice); one that reads it is traced for every slice and sees each slice's rows."""
    x = jnp.arange(10.0)[:, None] * jnp.ones((1, 3))
    traced = []

    def plain(part):
        traced.append(part.shape[0])
        return part * 2.0 + 1.0

    got = jax.jit(lambda x: cpu.concat_slices(plain, x, 4))(x)
    np.testing.assert_array_equal(got, x * 2.0 + 1.0)
    assert sorted(traced) == [2, 3]

    seen = []

    def positioned(part):
        at = cpu.slice_position()
        seen.append((at.start, at.rows, at.total))
        return part + at.start

    got = jax.jit(lambda x: cpu.concat_slices(positioned, x, 4))(x)
    assert seen == [(0, 2, 10), (2, 3, 10), (5, 2, 10), (7, 3, 10)]
    starts = np.repeat([0, 2, 5, 7], [2, 3, 2, 3])[:, None]
    np.testing.assert_array_equal(got, x + starts)


def test_nested_slices_share_the_outer_trace_and_aux_comes_from_the_last_slice():
    """A convolution's own split inside a batch slice does not by itself make every batch slice
    trace afresh; ``has_aux`` returns the last slice's aux, computed inside the shared trace."""
    x = jnp.arange(16.0)[:, None]
    traced = []

    def outer(part):
        traced.append(part.shape[0])
        y = cpu.concat_slices(lambda q: q * 3.0, part, 2)
        return y, {"total": jnp.sum(part)}

    y, aux = jax.jit(lambda x: cpu.concat_slices(outer, x, 4, has_aux=True))(x)
    np.testing.assert_array_equal(y, x * 3.0)
    assert traced == [4] and float(aux["total"]) == float(jnp.sum(x[12:]))
