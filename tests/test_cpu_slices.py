"""jaxcnn.cpu.slices: how many slices a training batch is computed in on this host."""

import importlib
from pathlib import Path

import numpy as np
import pytest

from jaxcnn import cpu


def test_slice_rows_follow_the_vector_width(monkeypatch):
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
    cpuinfo = Path("/proc/cpuinfo")
    flags = ({f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
              for f in line.split(":", 1)[1].split()} if cpuinfo.exists() else set())
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to check the host's rows against")
    # The host's own answer, independently of NumPy's table, for the function and the constant
    # the step uses.
    want = 32 if "avx512f" in flags else 16
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


@pytest.mark.parametrize(("rows", "table"), [
    # (batch, bytes an example) -> (chunks, slices): slices of 8 MiB // bytes rows (a power of
    # two, at least `rows`), 4 to a chunk, at least 2 chunks that divide the batch.
    (16, (((1024, 110 << 10), (4, 4)), ((1024, 531 << 10), (16, 4)), ((256, 531 << 10), (4, 4)),
          ((256, 110 << 10), (1, 16)), ((512, 110 << 10), (2, 4)), ((255, 1 << 20), (1, 8)),
          ((1000, 1 << 20), (1, 16)), ((4096, 1), (1, 16)), ((128, 1 << 20), (1, 8)))),
    (32, (((1024, 531 << 10), (8, 4)), ((1024, 110 << 10), (4, 4)), ((256, 531 << 10), (2, 4)),
          ((128, 1 << 20), (1, 4))))])
def test_chunk_plan_sizes_slices_by_bytes_per_example(monkeypatch, rows, table):
    monkeypatch.setenv(cpu.ENV_VAR, "on")
    monkeypatch.setattr(cpu.slices, "SLICE_ROWS", rows)
    assert cpu.CHUNK_SLICES == 4 and cpu.MIN_CHUNKED_BATCH == 256
    assert cpu.SLICE_BYTES == 8 << 20
    for (batch, size), want in table:
        assert cpu.chunk_plan(batch, size) == want, (batch, size)
        assert cpu.chunk_plan(np.int64(batch), size) == want, (batch, size)
    assert cpu.chunk_plan(None, 1 << 20) == (1, 1)
    assert cpu.chunk_plan(128, lambda: 1 / 0) == (1, 8 if rows == 16 else 4)  # not measured
    assert cpu.chunk_plan(1024, lambda: 110 << 10) == (4, 4)
    with cpu.whole_batch():
        assert cpu.chunk_plan(1024, 1 << 20) == (1, 1)
    monkeypatch.setenv(cpu.ENV_VAR, "off")
    assert cpu.chunk_plan(1024, 1 << 20) == (1, 1)


def test_example_bytes_counts_every_value_the_function_computes():
    import jax
    import jax.numpy as jnp

    w = np.ones((3, 5), np.float32)
    # x @ w: 5 floats; tanh: 5; sum: 1; argmax flattens x (3 floats), then its int32: 1.
    # 15 values of 4 bytes.
    size = cpu.example_bytes(lambda x: (jnp.tanh(x @ w).sum(), jnp.argmax(x)),
                             jax.ShapeDtypeStruct((1, 3), jnp.float32))
    assert size == 15 * 4
    assert cpu.example_bytes(lambda x: x.astype(jnp.float16) * 2, np.ones((1, 4))) == (
        4 * 2 + 4 * 2)


def test_scan_chunks_takes_equal_chunks_in_order_and_tells_their_rows():
    import jax
    import jax.numpy as jnp

    x = jnp.arange(12.0).reshape(6, 2)
    seen = []

    def body(carry, part):
        xs, nothing = part
        assert nothing is None
        at = cpu.slice_position()
        seen.append((at.rows, at.total))
        picked = jax.lax.dynamic_slice_in_dim(jnp.arange(6.0), at.start, at.rows)
        return carry + xs.sum(), (xs[:, 0], picked)

    total, (firsts, picked) = cpu.scan_chunks(body, 0.0, (x, None), 3)
    assert float(total) == float(x.sum())
    np.testing.assert_array_equal(firsts, [[0, 2], [4, 6], [8, 10]])
    np.testing.assert_array_equal(picked, [[0, 1], [2, 3], [4, 5]])  # each chunk's own rows
    assert seen == [(2, 6)]  # traced once, by lax.scan
    assert cpu.slice_position() is None
    # Inside concat_slices, the rows are the outer batch's.
    out = cpu.concat_slices(lambda part: cpu.scan_chunks(
        lambda c, p: (c, jax.lax.dynamic_slice_in_dim(jnp.arange(8.0), cpu.slice_position().start,
                                                      1)), 0, part, 2)[1].ravel(),
        jnp.zeros((4, 1)), 2)
    np.testing.assert_array_equal(out, [0, 1, 2, 3])


@pytest.mark.parametrize("chunks", [0, 4, 2.0])
def test_scan_chunks_refuses_rows_it_cannot_split(chunks):
    with pytest.raises(ValueError, match="divisible by chunks"):
        cpu.scan_chunks(lambda c, p: (c, p), 0, np.ones((6, 1)), chunks)
    with pytest.raises(ValueError, match=r"got rows \[4, 6\]"):
        cpu.scan_chunks(lambda c, p: (c, p), 0, (np.ones((6, 1)), np.ones(4)), 2)
