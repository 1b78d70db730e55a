"""A four-convolution CNN composed from `jaxcnn.layers` (its own `get_model`) on Fashion-MNIST
with the augmentation recipe: 2-pixel padded random crops and horizontal flips on the device,
label smoothing 0.1 and a moving average of the parameters for evaluation; SGD with momentum,
weight decay 1e-4 and cosine decay for 30 epochs (result and time in the README's Results
table).

Run it (every config key can be overridden; `--help` lists them)::

    JAXCNN_DATA=../shared/data python experiments/fashion_augmented.py --runs-dir runs
"""

from jaxcnn import cli
from jaxcnn import layers as L
from jaxcnn.config import Config


def get_config() -> Config:
    """The configuration of this experiment."""
    return Config(
        experiment="fashion_augmented",
        dataset="fashion_mnist",
        epochs=30,
        batch_size=128,
        optimizer="momentum",
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="cosine",
        augment=("crop:2", "flip"),
        label_smoothing=0.1,
        ema_decay=0.99,
        val_fraction=0.1,
        log_every=50,
    )


def get_model(config: Config) -> L.Layer:
    """conv 32@3x3 -> ReLU -> max-pool 2; (conv 64@3x3 -> ReLU) x 2 -> max-pool 2; conv
    128@3x3 -> ReLU; dense 256 -> ReLU; dense 10 (all convolutions SAME)."""
    return L.serial(
        L.Conv(32, 3, padding="SAME"), L.Relu(), L.MaxPool(2),
        L.Conv(64, 3, padding="SAME"), L.Relu(),
        L.Conv(64, 3, padding="SAME"), L.Relu(), L.MaxPool(2),
        L.Conv(128, 3, padding="SAME"), L.Relu(),
        L.Flatten(), L.Dense(256), L.Relu(), L.Dense(10))


if __name__ == "__main__":
    raise SystemExit(cli.run_main(get_config(), model=get_model))
