"""The fixed-filter demo: Sobel, Gaussian and sharpen filters on real photographs, logged to
TensorBoard beside their inputs (the ``filters_demo`` experiment; :class:`FiltersConfig`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxcnn import config as config_lib
from jaxcnn import filters as filters_lib
from jaxcnn import layers as layers_lib
from jaxcnn import runs, visualize
from jaxcnn.config import FiltersConfig
from jaxcnn.errors import ConfigError
from jaxcnn.files import atomic_write
from jaxcnn.layers import Layer
from jaxcnn.summarize import summary
from jaxcnn.tracking import TensorBoardWriter

__all__ = ["filters_summary", "run_filters"]


def _sample_photos(names: Sequence[str], max_size: int) -> dict[str, np.ndarray]:
    """scikit-learn's bundled photographs by file name, resized: {name: (H, W, 3) float32}."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    files = [Path(f).name for f in bunch.filenames]
    out = {}
    for name in names:
        if name not in files:
            raise ConfigError(f"FiltersConfig: images has {name!r}, which is not one of "
                              f"scikit-learn's sample images ({', '.join(files)})")
        img = Image.fromarray(bunch.images[files.index(name)])
        scale = max_size / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.LANCZOS)
        out[Path(name).stem] = np.asarray(img, np.float32) / 255.0
    return out


def _filter_bank(config: FiltersConfig) -> dict[str, Layer]:
    return {
        "sobel_x": filters_lib.FixedConv(filters_lib.sobel_x(), name="sobel_x"),
        "sobel_y": filters_lib.FixedConv(filters_lib.sobel_y(), name="sobel_y"),
        "gaussian": filters_lib.FixedConv(
            filters_lib.gaussian(config.gaussian_size, config.gaussian_sigma), name="gaussian"),
        "sharpen": filters_lib.FixedConv(filters_lib.sharpen(), name="sharpen"),
    }


def filters_summary(config: FiltersConfig) -> str:
    """The table of the demo's filter bank (a parallel of fixed convolutions) on RGB images."""
    bank = layers_lib.parallel(*_filter_bank(config).values())
    return str(summary(bank, (None, config.max_size, config.max_size, 3)))


def _unit(x: np.ndarray) -> np.ndarray:
    """Signed responses shown around grey 0.5: 0 maps to 0.5, +-max|x| to 1 and 0."""
    m = float(np.max(np.abs(x)))
    return np.clip(0.5 + 0.5 * x / m, 0.0, 1.0) if m > 0 else np.full_like(x, 0.5)


def run_filters(config: FiltersConfig) -> runs.RunResult:
    """Apply Sobel (x, y, magnitude), Gaussian and sharpen filters to real photographs and write
    each result beside its input (``filters/<photo>/<filter>``: input | output) to TensorBoard,
    with the kernels as images (``kernels/<filter>``) and the filter bank's summary."""
    photos = _sample_photos(config.images, config.max_size)  # unknown names: before a folder
    table = filters_summary(config)
    run_dir = runs.make_run_dir(config.runs_dir, config.experiment)
    runs.save_config(run_dir, config)
    atomic_write(run_dir / runs.SUMMARY_FILE, table + "\n")
    start = time.perf_counter()
    runs.write_status(run_dir, experiment=config.experiment, run=run_dir.name,
                  start_time=datetime.now().isoformat(timespec="seconds"), status="running")
    bank = _filter_bank(config)
    with TensorBoardWriter(run_dir) as writer:
        writer.write_texts(0, {"config": runs.code_block(config_lib.to_json(config)),
                               "model_summary": runs.code_block(table)})
        writer.write_images(0, {f"kernels/{k}": visualize.filter_grid(
            np.asarray(layer_kernel)) for k, layer_kernel in (
            ("sobel_x", filters_lib.sobel_x()), ("sobel_y", filters_lib.sobel_y()),
            ("gaussian", filters_lib.gaussian(config.gaussian_size, config.gaussian_sigma)),
            ("sharpen", filters_lib.sharpen()))})
        for photo, rgb in photos.items():
            x = jnp.asarray(rgb[None])
            grey = jnp.mean(x, axis=-1, keepdims=True)
            outputs = {}
            for name, layer in bank.items():
                src = grey if name.startswith("sobel") else x
                y, _ = layer.apply({}, {}, src)
                y = np.asarray(y[0])
                outputs[name] = _unit(y) if name.startswith("sobel") else np.clip(y, 0.0, 1.0)
            magnitude, _ = filters_lib.sobel_edges(grey)
            mag = np.asarray(magnitude[0])
            outputs["sobel_magnitude"] = mag / mag.max() if mag.max() > 0 else mag
            images = {}
            for name, out in outputs.items():
                if out.shape[-1] == 1:
                    out = np.repeat(out, 3, axis=-1)
                gap = np.ones((rgb.shape[0], 4, 3), np.float32)
                images[f"filters/{photo}/{name}"] = np.concatenate([rgb, gap, out], axis=1)
            writer.write_images(0, images)
    runs.write_status(run_dir, status="completed", wall_time_s=time.perf_counter() - start)
    return runs.RunResult(run_dir, config, {}, None, [], True)

