"""Progress bars: the running means an epoch's bar shows, and where a notebook is detected."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from jaxcnn import progress


def test_the_bar_shows_the_running_means_of_finite_steps(capsys):
    bar = progress.EpochBar(5, "demo epoch 1/1")
    bar.feed({"loss": np.array([1.0, 3.0]), "accuracy": np.array([0.5, 1.0]),
              "finite": np.array([True, True])})
    bar.feed({"loss": np.array([np.nan, 5.0, 7.0]), "accuracy": np.array([0.0, 0.0, 0.5]),
              "finite": np.array([False, True, True])})
    assert bar.bar.n == 5
    # means over the four finite steps: loss (1+3+5+7)/4, accuracy (0.5+1+0+0.5)/4
    assert bar.bar.postfix == "acc=0.5000, loss=4.0000"  # tqdm sorts the keys
    bar.close({"train_loss": 0.25, "train_accuracy": 0.75, "test_accuracy": 0.5})
    assert "test_acc=0.5000" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "expected"), [({"IPKernelApp": {}}, True),
                                                  ({"TerminalIPythonApp": {}}, False)])
def test_a_jupyter_kernel_is_told_from_a_terminal_ipython(monkeypatch, config, expected):
    shell = types.SimpleNamespace(config=config)
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert progress.in_notebook() is expected


def test_no_ipython_is_no_notebook(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert progress.in_notebook() is False
