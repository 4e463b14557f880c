"""The model registry: versioned model blobs (torch.export programs, or legacy TorchScript) with
JSON metadata, stored in the run's database so the trainer can publish while the inference side
loads. A torch.export version also carries its weights for in-process inference
(nekrs_ml.models.aot).

Per model name: a version counter, one blob and one meta key per version, and a ``latest``
pointer. ``publish`` writes the blob and the meta before it moves ``latest``, so a reader that
follows ``latest`` always finds both. Each publish then prunes the versions beyond the newest
``keep_versions`` (keepVersions in the .par), except the current one and those pinned by a
rollback, so a long training run does not fill the server.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .. import keys
from ..client import Client
from ..errors import ConfigError, KeyNotFoundError, NekrsMLError, ServerError
from .features import features_of

DEFAULT_KEEP_VERSIONS = 10  # the default of keepVersions in config_schema.tsv


def publish(clients: Union[Client, Sequence[Client]], ns: str, name: str, blob: bytes,
            meta: dict, version: Optional[int] = None, export_blob: Optional[bytes] = None,
            keep_versions: int = DEFAULT_KEEP_VERSIONS,
            weights_blob: Optional[bytes] = None) -> int:
    """Stores ``blob`` as a new version of model ``name`` on every client's server.

    The version is INCR of the counter on the first server (unless ``version`` is given, e.g.
    one taken from another process's publish); the other servers get the same number and their
    counters are set to it. ``export_blob``, when given, is the same model as a saved
    ``torch.export`` program (legacy TorchScript versions); ``weights_blob`` the weights of a
    torch.export version for in-process inference (nekrs_ml.models.aot.weights_blob). Versions
    beyond the newest ``keep_versions`` are deleted (``prune``). Returns the version.
    """
    check_name(name)
    if int(keep_versions) < 1:
        raise ConfigError(f"keepVersions = {keep_versions}: must be >= 1")
    clients = list(clients) if isinstance(clients, (list, tuple)) else [clients]
    wanted = features_of(dict(meta, name=name))
    check_same_features(clients[0], ns, name, wanted)  # before a version number is taken
    if version is None:
        version = clients[0].increment(keys.model_counter(ns, name))
        others = clients[1:]
    else:
        others = clients
    record = dict(meta, name=name, version=int(version), time=time.time())
    record["features"] = wanted
    record.setdefault("format", "torchscript")
    record.setdefault("backend", "torch")  # onnx, tf, tflite: nekrs_ml.models.backend_formats
    record["export"] = export_blob is not None
    for client in others:
        client.set_string(keys.model_counter(ns, name), str(version))
    for client in clients:
        with _full_server_hint(name, version, keep_versions):
            _store(client, ns, name, int(version), blob, record, export_blob, weights_blob)
        prune(client, ns, name, keep_versions)
    return int(version)


def check_same_features(client: Client, ns: str, name: str, wanted: str) -> None:
    """A model name keeps its features (nekrs_ml.models.features): a solver that scales for
    one scheme must never be handed a version of the other."""
    current = latest_version(client, ns, name)
    if current is None:
        return
    text = client.get_string(keys.model_meta(ns, name, current))
    if text is None:
        return
    have = features_of(json.loads(text))
    if have != wanted:
        raise ConfigError(f"model {name!r}: its current version v{current} has features = "
                          f"{have}, this one {wanted}; a model name keeps its features: use "
                          "another modelName")


def prune(client: Client, ns: str, name: str, keep_versions: int) -> List[int]:
    """Deletes the blob, meta and export keys of the versions older than the newest
    ``keep_versions``, except the current version and the pinned ones; returns those deleted."""
    stored = versions(client, ns, name)
    keep = set(stored[-int(keep_versions):]) | pinned(client, ns, name)
    current = latest_version(client, ns, name)
    if current is not None:
        keep.add(current)
    doomed = [v for v in stored if v not in keep]
    for version in doomed:
        for key in (keys.model_blob(ns, name, version), keys.model_meta(ns, name, version),
                    keys.model_export(ns, name, version), keys.model_weights(ns, name, version)):
            client.delete(key)
    return doomed


def pinned(client: Client, ns: str, name: str) -> set:
    """The versions a rollback made current (never pruned)."""
    key = keys.model_pinned(ns, name)
    members = client.command(["SMEMBERS", key], key=key) or []
    return {int(m) for m in members}


@contextlib.contextmanager
def _full_server_hint(name: str, version, keep_versions: int):
    """A write refused by a full server names the options that bound what the registry holds."""
    try:
        yield
    except (ServerError, NekrsMLError) as exc:
        if "maxmemory" not in str(exc).lower():
            raise
        raise ServerError(f"cannot publish model {name!r} v{version}: the server is full ({exc}); "
                          f"raise maxMemory or lower keepVersions (now {keep_versions}) in the "
                          "[NEKRS_ML] section of the .par") from None


def check_name(name: str) -> str:
    if (not isinstance(name, str) or not name or len(name) > 200
            or any(c in name for c in "{}:") or any(c.isspace() for c in name)):
        raise ConfigError(f"model name {name!r} is not valid (1-200 characters, no '{{', '}}', "
                          "':' or spaces)")
    return name


def _store(client: Client, ns: str, name: str, version: int, blob: bytes, record: dict,
           export_blob: Optional[bytes], weights_blob: Optional[bytes]) -> None:
    client.set_string(keys.model_blob(ns, name, version), blob)
    if export_blob is not None:
        client.set_string(keys.model_export(ns, name, version), export_blob)
    if weights_blob is not None:
        client.set_string(keys.model_weights(ns, name, version), weights_blob)
    client.set_string(keys.model_meta(ns, name, version), json.dumps(record))
    client.set_string(keys.model_latest(ns, name), str(version))  # only after blob and meta
    names = keys.model_names(ns)
    client.command(["SADD", names, name], key=names)


def latest_version(client: Client, ns: str, name: str) -> Optional[int]:
    """The newest complete version of ``name``, or None when nothing was published."""
    value = client.get_string(keys.model_latest(ns, name))
    return int(value) if value is not None else None


def load(client: Client, ns: str, name: str, version: Optional[int] = None) -> Tuple[bytes, dict]:
    """(blob, meta) of ``version`` (default: the latest) of model ``name``."""
    if version is None:
        version = latest_version(client, ns, name)
        if version is None:
            raise KeyNotFoundError(
                f"model {name!r} has no published version in namespace {ns!r} (no "
                f"{keys.model_latest(ns, name)!r}); published models: "
                f"{_describe(models(client, ns))}")
    blob = client.get_string(keys.model_blob(ns, name, version))
    meta = client.get_string(keys.model_meta(ns, name, version))
    if blob is None or meta is None:
        raise KeyNotFoundError(
            f"model {name!r} version {version} does not exist in namespace {ns!r}; available "
            f"versions: {', '.join(map(str, versions(client, ns, name))) or 'none'}")
    return blob, json.loads(meta)


def load_export(client: Client, ns: str, name: str, version: int) -> bytes:
    """The saved ``torch.export`` program of a version (published with ``export_blob``)."""
    blob = client.get_string(keys.model_export(ns, name, version))
    if blob is None:
        raise KeyNotFoundError(f"model {name!r} version {version} has no torch.export program "
                               f"({keys.model_export(ns, name, version)!r}); use the TorchScript form")
    return blob


def rollback(client: Client, ns: str, name: str, version: Optional[int] = None) -> int:
    """Makes ``version`` (default: the newest stored version below the current one) the current
    version of ``name``; workers switch to it between batches. Returns that version."""
    current = latest_version(client, ns, name)
    stored = versions(client, ns, name)
    if version is None:
        older = [v for v in stored if current is None or v < current]
        if not older:
            raise KeyNotFoundError(f"model {name!r}: no version older than v{current} to roll "
                                   f"back to (stored: {', '.join(map(str, stored)) or 'none'})")
        version = older[-1]
    if version not in stored or client.get_string(keys.model_meta(ns, name, version)) is None:
        raise KeyNotFoundError(f"model {name!r} version {version} does not exist in namespace "
                               f"{ns!r}; stored versions: {', '.join(map(str, stored)) or 'none'}")
    client.set_string(keys.model_latest(ns, name), str(int(version)))
    pins = keys.model_pinned(ns, name)
    client.command(["SADD", pins, str(int(version))], key=pins)  # never pruned from now on
    return int(version)


def versions(client: Client, ns: str, name: str) -> List[int]:
    """The stored versions of ``name``, ascending (found by SCAN, so deleted ones are gone)."""
    prefix = keys.model_blob(ns, name, 0)[:-1]  # "...:v"
    pattern = glob_escape(prefix) + "[0-9]*"
    found = set()
    for key in client.redis.scan_iter(match=pattern, count=1000):
        suffix = (key.decode() if isinstance(key, bytes) else key)[len(prefix):]
        if suffix.isdigit():  # skips the ":meta", ":export" and ":weights" keys
            found.add(int(suffix))
    return sorted(found)


def models(client: Client, ns: str) -> Dict[str, Optional[int]]:
    """Every registered model name with its latest version."""
    names = keys.model_names(ns)
    members = client.command(["SMEMBERS", names], key=names) or []
    decoded = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
    return {name: latest_version(client, ns, name) for name in decoded}


def glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _describe(listing: Dict[str, Optional[int]]) -> str:
    return ", ".join(f"{name} (v{v})" for name, v in listing.items()) or "none"
