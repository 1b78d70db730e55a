"""What pyproject.toml cannot express: the package list. The metadata is in pyproject.toml.

jaxcnn and its subpackages are found automatically; the built-in experiments stay plain scripts
in the repo's top-level ``experiments/`` folder (``python experiments/digits_cnn.py`` works from
a clone) and are installed as the subpackage ``jaxcnn.experiments``, so ``jaxcnn list`` and
``jaxcnn run NAME`` find them after a plain ``pip install .`` as after an editable install.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["jaxcnn", "jaxcnn.*"]), "jaxcnn.experiments"],
    package_dir={"jaxcnn.experiments": "experiments"},
)
