"""Azure SDK errors as the backend's: not found, transient (retry later), or a clear reason."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from shared.backends.base import BackendError, NotFoundError, TransientBackendError


def error_reason(exc: BaseException) -> str:
    """The service's error code and message, on one line, without request details."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    text = " ".join(str(message).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{code}: {text}" if code and code not in text else text


@contextlib.contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Map Azure SDK errors to the backend's: 404 NotFound, 429/5xx/network transient, the rest clear errors."""
    from azure.ai.ml.exceptions import MlException
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except BackendError:
        raise
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"{action}: not found ({error_reason(exc)})") from exc
    except ClientAuthenticationError as exc:
        if exc.status_code is None:  # raised by the credential itself: no token at all
            raise BackendError(f"{action}: no Azure credential could get a token ({error_reason(exc)})") from exc
        raise BackendError(f"{action}: not authorized ({error_reason(exc)}); check the identity's role on the workspace") from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status == 404:
            raise NotFoundError(f"{action}: not found ({error_reason(exc)})") from exc
        if status == 429 or status >= 500:
            raise TransientBackendError(f"{action}: Azure ML answered HTTP {status}, retry later ({error_reason(exc)})") from exc
        if status == 409:
            raise BackendError(f"{action}: conflict with the resource's current state (HTTP 409, {error_reason(exc)})") from exc
        raise BackendError(f"{action}: HTTP {status or '?'} ({error_reason(exc)})") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientBackendError(f"{action}: cannot reach Azure ML ({error_reason(exc)})") from exc
    except MlException as exc:
        raise BackendError(f"{action}: {error_reason(exc)}") from exc

