"""jaxcnn.cpu.features: the host's vector width, read from NumPy's table, against the kernel's
own account of the CPU (/proc/cpuinfo)."""

import pytest

from jaxcnn import cpu


def test_has_avx512_reads_the_table_it_is_given():
    assert cpu.has_avx512({"AVX512F": True, "AVX2": True})
    assert not cpu.has_avx512({"AVX512F": False, "AVX2": True})
    assert not cpu.has_avx512({})  # e.g. an ARM CPU, or a NumPy without the table


def test_the_hosts_answer_agrees_with_proc_cpuinfo(proc_cpu_flags):
    if not proc_cpu_flags:
        pytest.skip("no /proc/cpuinfo flags to check the host's answer against")
    assert cpu.has_avx512() == ("avx512f" in proc_cpu_flags)
    assert cpu.has_avx512(cpu.cpu_features()) == ("avx512f" in proc_cpu_flags)
