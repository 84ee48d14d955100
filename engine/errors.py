"""The engine's exceptions. Each message is one sentence a student understands.

Pages show ``str(error)`` with ``st.error``; the CLI prints it and exits non-zero.
"""


class GlassboxError(Exception):
    """Base of every error the engine raises on purpose (bad input, unavailable model, ...)."""


class ImageError(GlassboxError):
    """An uploaded or sampled image cannot be used: not an image, truncated, too large, too small."""


class ModelError(GlassboxError):
    """A model cannot be built or loaded: unknown name, weights unavailable offline."""


class CheckpointError(ModelError):
    """A user checkpoint is refused: unsafe pickle, TorchScript, shape mismatch, bad class list."""


class ConfigError(GlassboxError):
    """A parameter is out of range or names something that does not exist (a class, a layer)."""


class JobError(GlassboxError):
    """A background job failed, was not found, or the queue is full."""


class Cancelled(GlassboxError):
    """The user stopped the work; raised when a progress callback returns False."""


class DatasetError(GlassboxError):
    """A concept dataset cannot be used: missing files, bad layout, too few images."""


class ChainError(GlassboxError):
    """An image chain cannot be stored, found or imported: unknown hash, bad or foreign chain ZIP."""
