"""The library's own exceptions: every user-facing error is one of these.

Each message is one sentence: where (layer, file, key, run folder), what was given, what is
needed, and how to fix it. They subclass the built-in type a caller would catch anyway
(``ValueError`` for bad values, ``FileNotFoundError`` for missing files).
"""

from __future__ import annotations


class JaxcnnError(Exception):
    """Base class of every error jaxcnn raises on purpose."""


class LayerError(JaxcnnError, ValueError):
    """A layer's configuration or input shape is wrong.

    ``kind`` is the layer type (``"Conv"``), ``path`` its name inside the model (``"block1/conv2"``)
    or None when unknown, ``detail`` the rest of the sentence. Combinators re-raise a child's error
    with the child's name prefixed, so the message names exactly the failing layer.
    """

    def __init__(self, kind: str, path: str | None, detail: str, *, located: bool = False
                 ) -> None:
        self.kind, self.path, self.detail = kind, path, detail
        # A layer raising under its own name= is not yet located in its parent: the parent's
        # name for it is that same name, which must not be prefixed twice.
        self.located = located or path is None
        super().__init__(f"{kind} layer {path!r}: {detail}" if path else f"{kind} layer: {detail}")

    def at(self, name: str) -> LayerError:
        """The same error, located one level deeper: under the child named ``name``."""
        if not self.located and self.path == name:
            return LayerError(self.kind, name, self.detail, located=True)
        return LayerError(self.kind, f"{name}/{self.path}" if self.path else name, self.detail,
                          located=True)


class ConfigError(JaxcnnError, ValueError):
    """An experiment configuration or command-line override is wrong."""


class DataError(JaxcnnError, ValueError):
    """A data file is corrupt, truncated or not in the expected format."""


class ChecksumError(DataError):
    """A data file's checksum differs from the published one."""


class DatasetNotFoundError(JaxcnnError, FileNotFoundError):
    """A data file is neither on disk nor downloadable."""


class RunError(JaxcnnError, RuntimeError):
    """A run folder or checkpoint cannot be used."""


class CheckpointError(RunError):
    """A checkpoint is missing, corrupt or belongs to a different model or config."""


class NonFiniteLossError(RunError, FloatingPointError):
    """The training loss became NaN or infinite."""
