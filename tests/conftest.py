"""Shared pytest configuration: the ``requires_cpu_backend`` marker and the
``proc_cpu_flags`` fixture (the kernel's CPU flags, to check jaxcnn's CPU feature reading).

Most tests hold on any JAX backend. Some test what only the CPU backend runs (jaxcnn's CPU
mechanisms: :mod:`jaxcnn.cpu`'s convolution plans and batch slices, which ``JAXCNN_CPU=auto``
turns on only there) or compare this process's numbers with runs that subprocesses make on CPU
devices. Mark those ``@pytest.mark.requires_cpu_backend(reason="...")`` (or a module's
``pytestmark``): on a host whose default backend is not the CPU they are skipped with that
reason, instead of failing. The backend is read when such a test is set up, not at collection,
so collecting the tests starts no backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CPU_BACKEND_REASON = "the CPU execution plan is only used on the CPU backend"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_cpu_backend(reason): skip unless JAX's default backend is the CPU "
                   f"(default reason: {CPU_BACKEND_REASON})")


@pytest.hookimpl(tryfirst=True)  # before fixtures are set up: theirs may need the CPU too
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("requires_cpu_backend")
    if marker is None:
        return
    import jax

    backend = jax.default_backend()
    if backend != "cpu":
        reason = marker.kwargs.get("reason", marker.args[0] if marker.args else
                                   CPU_BACKEND_REASON)
        pytest.skip(f"needs JAX's CPU backend, this host's default is {backend!r}: {reason}")


@pytest.fixture
def proc_cpu_flags() -> set[str]:
    """The CPU flags the kernel lists in /proc/cpuinfo (empty where there is none): the host's
    own account of its vector units, independent of NumPy's feature table."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    return {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
            for f in line.split(":", 1)[1].split()}
