"""Exception types shared by the Python client and the C++ client (``nekrs_ml._core``).

The C++ exceptions of libnekrsml are translated to these classes by the bindings, so code
catching ``nekrs_ml.errors.KeyNotFoundError`` works with either client.
"""


class NekrsMLError(Exception):
    """Base of every nekrs_ml error."""


class ConnectionError(NekrsMLError):  # noqa: A001 - deliberate, mirrors redis-py naming
    """Could not connect to a server, or the connection broke."""


class AuthenticationError(ConnectionError):
    """The server refused the password, or a password is required and none was given."""


class TimeoutError(NekrsMLError):  # noqa: A001
    """A call did not complete within its timeout."""


class WorkerUnavailableError(TimeoutError):
    """No model worker serves the caller's queue (its heartbeat expired or never existed)."""


class ModelError(NekrsMLError):
    """A model worker could not evaluate the model (the message quotes the worker)."""


class ServerError(NekrsMLError):
    """The server answered with an error reply (quoted in the message)."""


class TensorFormatError(NekrsMLError):
    """A value is not a valid tensor of the wire format, or does not match what was expected."""


class KeyNotFoundError(NekrsMLError, KeyError):
    """The key does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class PackageMissingError(KeyNotFoundError):
    """In-process inference: the AOTInductor package of the model's graph is not compiled (yet)
    for this device and torch version (``nekrs-ml compile``)."""


class ConfigError(NekrsMLError, ValueError):
    """Invalid option, configuration key or value; the message names it and the valid choices."""


class OrchestratorError(NekrsMLError):
    """The orchestrator (redis-server processes) could not be started, stopped or queried."""


class DiskFullError(NekrsMLError, OSError):
    """A file could not be written: no space left on its file system (ENOSPC, or the quota:
    EDQUOT). The message names the file, the file system and what to do; nothing half-written
    is left behind."""
