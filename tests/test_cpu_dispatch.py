"""jaxcnn.cpu.dispatch: importing jaxcnn makes JAX's CPU client run calls inline, unless told
not to or too late; each case in a fresh process, as JAX reads the setting once, when it makes
the client."""

import os
import subprocess
import sys

import pytest

_PROBE = """
import sys
import jax
if sys.argv[1] == "compute-first":
    jax.numpy.ones(2).block_until_ready()
import jaxcnn
if sys.argv[1] == "user-after":
    jax.config.update("jax_cpu_enable_async_dispatch", True)
jax.numpy.ones(2).block_until_ready()  # the client exists from here on
print(jax.config.values["jax_cpu_enable_async_dispatch"], jaxcnn.cpu.call_inline())
"""


def _probe(order: str = "import-first", switch: str | None = None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAXCNN_CPU"}
    if switch is not None:
        env["JAXCNN_CPU"] = switch
    out = subprocess.run([sys.executable, "-c", _PROBE, order], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], out[1]


@pytest.mark.parametrize("switch", [None, "auto", "on"])
def test_import_makes_calls_inline(switch):
    # async dispatch off; calling again once the client exists changes nothing
    assert _probe(switch=switch) == ("False", "False")


def test_switch_off_keeps_async_dispatch():
    assert _probe(switch="off") == ("True", "False")


def test_the_users_setting_after_import_stands():
    assert _probe("user-after") == ("True", "False")


def test_too_late_after_the_first_computation_changes_nothing():
    assert _probe("compute-first") == ("True", "False")
