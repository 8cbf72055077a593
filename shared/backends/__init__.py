"""ML backends behind one interface (see base.py). Chosen by the ML_BACKEND setting."""

from __future__ import annotations

import threading

from shared.backends.base import MLBackend
from shared.settings import Settings, get_settings

_lock = threading.Lock()
_backends: dict[tuple[str, int], MLBackend] = {}


def get_backend(settings: Settings | None = None) -> MLBackend:
    """The backend for ``settings`` (one instance per worker; heavy SDKs imported here, lazily)."""
    s = settings or get_settings()
    key = (s.ml_backend, id(s))
    with _lock:
        backend = _backends.get(key)
        if backend is None:
            if s.ml_backend == "azureml":
                from shared.backends.azureml.backend import AzureMLBackend

                backend = AzureMLBackend(s)
            else:
                from shared.backends.local import LocalBackend

                backend = LocalBackend(s)
            _backends[key] = backend
        return backend


def use_backend(backend: MLBackend | None, settings: Settings | None = None) -> None:
    """Install a backend instance for ``settings`` (tests); None forgets all cached backends."""
    with _lock:
        if backend is None:
            _backends.clear()
            return
        s = settings or get_settings()
        _backends[(s.ml_backend, id(s))] = backend
