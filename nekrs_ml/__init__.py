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

__version__ = "0.1.0"

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
