"""The CNN of Flax's MNIST example on MNIST with the augmentation recipe: random shifts of up
to 2 pixels (on the device, inside the compiled epoch) and label smoothing 0.1, SGD with
momentum and cosine decay for 20 epochs (results in the README).

Run it (every config key can be overridden; `--help` lists them)::

    JAXCNN_DATA=../shared/data python experiments/mnist_augmented.py --runs-dir runs
    jaxcnn run mnist_augmented --augment crop:2,flip --epochs 30
"""

from jaxcnn import cli
from jaxcnn.config import Config


def get_config() -> Config:
    """The configuration of this experiment."""
    return Config(
        experiment="mnist_augmented",
        dataset="mnist",
        model="simple_cnn",
        epochs=20,
        batch_size=128,
        optimizer="momentum",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        augment=("translate:2",),
        label_smoothing=0.1,
        val_fraction=0.1,
        log_every=50,
    )


if __name__ == "__main__":
    raise SystemExit(cli.run_main(get_config()))
