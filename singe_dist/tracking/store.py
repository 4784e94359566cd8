"""Where a job's MLflow runs go: the tracking URI, the files a local store writes, the command that shows them.

The URI is ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file beside the run directory,
so that tracking works with no server at all. Everything that shows a URI to a person redacts it first
(a server URI may hold a password).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from singe_dist.config import JobConfig
from singe_dist.tracking.redaction import redact


def resolve_uri(config: JobConfig) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<parent of run.out_dir>/mlflow.db``."""
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    parent = Path(config.run.out_dir).expanduser().absolute().parent
    return f"sqlite:///{parent / 'mlflow.db'}"


def scheme(uri: str) -> str:
    """The URI's scheme in lower case (``databricks`` for every Databricks form); ``""`` for a plain path."""
    if uri.startswith("databricks"):
        return "databricks"
    return urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith("file:") else ""


def is_http(uri: str) -> bool:
    """A tracking server reached over HTTP(S): the only kind of store that can be down or slow."""
    return scheme(uri) in ("http", "https")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store, and for an in-memory database."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def is_local(uri: str) -> bool:
    """A store in local files (SQLite, ``file:``, a plain path): it answers at once or not at all."""
    return sqlite_path(uri) is not None or scheme(uri) in ("", "file")


def local_store_path(uri: str) -> str | None:
    """The file or directory a file-backed store writes (``sqlite:///``, ``file:``, a plain path), as written
    in the URI (relative stays relative); None for a server or an in-memory store."""
    sqlite = sqlite_path(uri)
    if sqlite is not None or uri.startswith("sqlite:"):
        return None if sqlite is None else str(sqlite)
    uri_scheme = scheme(uri)
    if uri_scheme == "file":
        return urlsplit(uri).path or None
    return uri if uri_scheme == "" else None


def ui_hint(config: JobConfig) -> str:
    """The command that opens the MLflow UI on this job's tracking store (``open <address>`` for a server).

    ``mlflow ui --backend-store-uri sqlite:////abs/runs/mlflow.db`` for the SQLite default; ``mlflow ui``
    listens on http://127.0.0.1:5000.
    """
    uri = resolve_uri(config)
    shown = redact(uri)
    if is_http(uri):
        return f"open {shown.rstrip('/')}"
    if scheme(uri).startswith("databricks"):
        return "open the Experiments page of your Databricks workspace"
    if scheme(uri) == "" and not uri.startswith("sqlite:"):  # a bare path is a file store
        shown = Path(uri).expanduser().absolute().as_uri()
    return f"mlflow ui --backend-store-uri {shown}"  # it serves http://127.0.0.1:5000


__all__ = ["is_http", "is_local", "local_store_path", "resolve_uri", "scheme", "sqlite_path", "ui_hint"]
