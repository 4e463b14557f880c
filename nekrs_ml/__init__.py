"""nekrs_ml: online training and inference for NekRS through an in-memory database."""

from .client import Client
from .errors import (
    AuthenticationError,
    ConfigError,
    ConnectionError,
    KeyNotFoundError,
    NekrsMLError,
    OrchestratorError,
    ServerError,
    TensorFormatError,
    TimeoutError,
)

try:  # written by the build from pyproject.toml's version (CMakeLists.txt)
    from ._version import __version__
except ImportError:  # a source checkout that was never built
    __version__ = "unknown (not built: pip install .)"

__all__ = [
    "Client",
    "AuthenticationError",
    "ConfigError",
    "ConnectionError",
    "KeyNotFoundError",
    "NekrsMLError",
    "OrchestratorError",
    "ServerError",
    "TensorFormatError",
    "TimeoutError",
    "__version__",
]
