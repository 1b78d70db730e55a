"""Your own model, data and loss in the runner: a small CNN composed from `jaxcnn.layers`,
trained on a folder of your images (`<folder>/<class>/*.png|jpg`, or `<folder>/train/<class>/`
and `<folder>/test/<class>/`) with a label-smoothed cross-entropy. The run gets everything a
built-in experiment gets: run folder, checkpoints, TensorBoard, progress bar, resume.

    python experiments/own_images.py --dataset path/to/images --epochs 10
    jaxcnn run experiments/own_images.py --dataset path/to/images
    jaxcnn resume runs/own_images/<timestamp>-<id>   # re-imports the run folder's copy
"""

import jax
import optax

from jaxcnn import cli, data
from jaxcnn import layers as L
from jaxcnn.config import Config


def get_config() -> Config:
    return Config(experiment="own_images", dataset="data/images", image_size=16, epochs=10,
                  batch_size=16, optimizer="adam", lr=3e-3, val_fraction=0.2, log_every=5)


def get_data(config: Config) -> data.Splits:
    return data.load(config.dataset, image_size=config.image_size)


def get_model(config: Config) -> L.Layer:
    classes = data.info(config.dataset, image_size=config.image_size).num_classes
    return L.serial(
        L.Conv(16, 3, padding="SAME"), L.Relu(), L.MaxPool(2),
        L.Conv(32, 3, padding="SAME"), L.Relu(), L.GlobalAvgPool(),
        L.Dense(classes))


def get_loss(config: Config):
    def smoothed_cross_entropy(logits, labels, mask=None):
        # labels: class indices, or soft targets (N, K) after --augment mixup or cutmix
        targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, logits.shape[-1])
        targets = optax.smooth_labels(targets, 0.1)
        per_example = optax.softmax_cross_entropy(logits, targets)
        if mask is None:
            return per_example.mean()
        return (per_example * mask).sum() / mask.sum()

    return smoothed_cross_entropy


if __name__ == "__main__":
    raise SystemExit(cli.run_main(get_config(), model=get_model, data=get_data, loss=get_loss))
