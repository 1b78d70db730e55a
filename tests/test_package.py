"""The top-level package: what ``import jaxcnn`` gives and what it does not load."""

import subprocess
import sys

import pytest


def test_lazy_modules_resolve_to_the_submodules():
    import jaxcnn.experiment
    import jaxcnn.tracking

    assert jaxcnn.experiment is sys.modules["jaxcnn.experiment"]
    assert jaxcnn.tracking.TensorBoardWriter is sys.modules["jaxcnn.tracking"].TensorBoardWriter
    assert set(jaxcnn.__all__) <= set(dir(jaxcnn))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxcnn.nope  # noqa: B018


def test_composing_layers_does_not_import_the_runner_stack():
    code = ("import sys, jaxcnn; from jaxcnn import layers, summary; "
            "print(sorted(m for m in ('tensorboardX', 'sklearn', 'torch', 'jaxcnn.experiment') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
