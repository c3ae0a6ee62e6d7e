"""The one exception the ML modules raise for a person to read. Torch-free, so every module that
raises or catches it (the worker's task, the pipeline, single-file loading) can import it."""


class GenerationError(Exception):
    """A failure with a message a person can read (shown on the job page as is)."""
