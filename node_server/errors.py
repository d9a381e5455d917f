"""User-facing errors: each carries one message that says what is wrong and what was expected.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class NodeServerError(Exception):
    """Base class for errors whose message is meant for the user."""


class ModelLoadError(NodeServerError):
    """A model could not be loaded (missing folder, wrong layout, missing component, unknown name)."""


class ParamError(NodeServerError, ValueError):
    """A parameter value was rejected; names the parameter and the reason."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"invalid {name}: {reason}")


class InputError(NodeServerError):
    """An input (file, folder, frame) could not be read or has an unsupported format."""
