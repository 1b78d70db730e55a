"""The classic fixed filters on real photographs: Sobel x and y (and the gradient magnitude),
a Gaussian blur and a sharpening kernel from :mod:`jaxcnn.filters`, applied to scikit-learn's
two bundled photographs (offline) and shown beside the input in TensorBoard (Images tab,
``filters/<photo>/<filter>``), with the kernels themselves under ``kernels/``.

Run it, then look::

    python experiments/filters_demo.py --runs-dir runs --gaussian-sigma 2.0
    jaxcnn run filters_demo
    tensorboard --logdir runs/filters_demo
"""

from jaxcnn import cli
from jaxcnn.config import FiltersConfig


def get_config() -> FiltersConfig:
    """The configuration of this demo."""
    return FiltersConfig(
        experiment="filters_demo",
        images=("china.jpg", "flower.jpg"),
        max_size=256,
        gaussian_size=5,
        gaussian_sigma=1.5,
    )


def main(argv: list[str] | None = None) -> int:
    """Hand the config, with the command line's overrides, to the runner."""
    return cli.run_main(get_config(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
