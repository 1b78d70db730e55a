"""jaxcnn: convolutional neural networks as pure JAX functions.

Layers are ``(init, apply)`` pairs over plain dicts of arrays (:mod:`jaxcnn.layers`), built on
pure array ops (:mod:`jaxcnn.ops`); :func:`summary` tabulates a model.
"""

from jaxcnn import errors, filters, layers, models, ops
from jaxcnn.layers import Layer
from jaxcnn.summarize import Summary, SummaryRow, summary

__all__ = ["Layer", "Summary", "SummaryRow", "errors", "filters", "layers", "models", "ops",
           "summary"]
__version__ = "0.1.0"
