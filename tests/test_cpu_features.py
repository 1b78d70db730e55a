"""jaxcnn.cpu.features: the host's vector width, read from NumPy's table, against the kernel's
own account of the CPU (/proc/cpuinfo)."""

from pathlib import Path

import pytest

from jaxcnn import cpu


def test_has_avx512_reads_the_table_it_is_given():
    assert cpu.has_avx512({"AVX512F": True, "AVX2": True})
    assert not cpu.has_avx512({"AVX512F": False, "AVX2": True})
    assert not cpu.has_avx512({})  # e.g. an ARM CPU, or a NumPy without the table


def test_the_hosts_answer_agrees_with_proc_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    flags = ({f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
              for f in line.split(":", 1)[1].split()} if cpuinfo.exists() else set())
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to check the host's answer against")
    assert cpu.has_avx512() == ("avx512f" in flags)
    assert cpu.has_avx512(cpu.cpu_features()) == ("avx512f" in flags)
