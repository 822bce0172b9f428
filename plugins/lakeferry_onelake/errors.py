"""How the ``onelake`` sink turns Azure SDK exceptions into the pipeline's two kinds of error.

The upload stage retries a TransientError in place (backoff at least the service's
Retry-After, and a circuit breaker shared by all uploads) and dead-letters a PermanentError.

- 429 and 503 (the service's throttling answers): transient ``throttled``, with Retry-After.
- Other 5xx, 408, timeouts and connection failures: transient ``sink_unavailable``.
- 401 and 403, and a credential that cannot get a token: transient ``sink_denied``. A credential
  or role-assignment problem affects every file alike and is fixed by an operator; were it
  permanent, every file uploaded meanwhile would be dead-lettered and need a replay. As a
  transient error it opens the circuit breaker, the files wait in the cache, the log and
  ``lakeferry_upload_breaker_open`` say why, and uploads resume by themselves once access is
  granted. (A 403 confined to one folder keeps only that folder's files waiting.)
- The filesystem (OneLake workspace, ADLS container) missing: transient ``sink_missing``, with a
  message naming it: a configuration problem like the one above.
- A directory in the way of a file (409 ``PathConflict`` and the like): permanent
  ``invalid_path``.
- 404 / 409 / 412 on a path otherwise (the temporary file vanished, a lease, a concurrent
  writer): transient ``sink_conflict``; the next attempt starts over.
- Any other 4xx: permanent ``sink_rejected`` (the service refuses this request as such).

Error texts are short, and any ``sig=`` (a SAS signature, which connection errors can quote
inside a URL) is redacted.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from lakeferry.api import PermanentError, PipelineError, Reason, TransientError

SINK_UNAVAILABLE = "sink_unavailable"
SINK_DENIED = "sink_denied"
SINK_MISSING = "sink_missing"
SINK_CONFLICT = "sink_conflict"

FILESYSTEM_MISSING = frozenset({"FilesystemNotFound", "ContainerNotFound"})
PATH_IN_THE_WAY = frozenset(
    {"PathConflict", "ResourceTypeMismatch", "InvalidSourceOrDestinationResourceType"}
)
MAX_RETRY_AFTER = 600.0

_SIG = re.compile(r"(?i)(sig=)[^&\s'\"]+")


def redact(text: str) -> str:
    """``text`` without SAS signatures."""
    return _SIG.sub(r"\1REDACTED", text)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the service asks us to wait (``x-ms-retry-after-ms``, ``Retry-After``), if any."""
    for name, scale in (("x-ms-retry-after-ms", 0.001), ("retry-after-ms", 0.001)):
        value = headers.get(name)
        if value:
            try:
                return min(MAX_RETRY_AFTER, max(0.0, float(value) * scale))
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, when.timestamp() - time.time()))


def _headers(exc: HttpResponseError) -> Mapping[str, str]:
    headers: Mapping[str, str] = getattr(exc.response, "headers", None) or {}
    return headers


def error_code(exc: HttpResponseError) -> str:
    """The service's error code (``PathNotFound``), or ``""``."""
    code = _headers(exc).get("x-ms-error-code")
    if code:
        return str(code)
    code_attr = getattr(exc, "error_code", None)
    return str(getattr(code_attr, "value", code_attr) or "")


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return redact(str(message).strip().splitlines()[0] if str(message).strip() else "")


def classify(exc: BaseException, what: str, *, filesystem: str, account_url: str) -> (
    PipelineError | None
):  # fmt: skip
    """The PipelineError for an Azure SDK exception raised while doing ``what``; None when
    ``exc`` is not one of the SDK's (the caller lets it escape to the daemon's classifier)."""
    if isinstance(exc, HttpResponseError) and exc.status_code:
        return _http_error(exc, what, filesystem=filesystem, account_url=account_url)
    if isinstance(exc, ClientAuthenticationError):  # a token could not be obtained
        return TransientError(SINK_DENIED, f"{what}: no token for the sink: {_first_line(exc)}")
    if isinstance(exc, ServiceResponseTimeoutError):
        return TransientError(SINK_UNAVAILABLE, f"{what}: timed out: {_first_line(exc)}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientError(SINK_UNAVAILABLE, f"{what}: connection failed: {_first_line(exc)}")
    if isinstance(exc, AzureError | OSError):
        return TransientError(SINK_UNAVAILABLE, f"{what}: {type(exc).__name__}: {_first_line(exc)}")
    return None


def _http_error(
    exc: HttpResponseError, what: str, *, filesystem: str, account_url: str
) -> PipelineError:
    status = int(exc.status_code or 0)
    code = error_code(exc)
    wait = retry_after(_headers(exc))
    text = f"{what}: HTTP {status} {code}".rstrip()
    if status in (429, 503):
        return TransientError(Reason.THROTTLED, f"{text} (sink throttling)", retry_after=wait)
    if status == 408 or status >= 500:
        return TransientError(SINK_UNAVAILABLE, f"{text}: {_first_line(exc)}", retry_after=wait)
    if status in (401, 403):
        return TransientError(
            SINK_DENIED,
            f"{text}: the sink refused the credential or its role assignment; uploads wait "
            "until access is granted",
            retry_after=wait,
        )
    if code in FILESYSTEM_MISSING:
        return TransientError(
            SINK_MISSING,
            f"{what}: filesystem {filesystem!r} does not exist at {account_url} (check "
            "sink.filesystem: for OneLake the workspace name or id; on ADLS Gen2 "
            "create_filesystem = true creates it)",
        )
    if code in PATH_IN_THE_WAY:
        return PermanentError(
            Reason.INVALID_PATH, f"{text}: a directory or file is in the way of this path"
        )
    if status in (404, 409, 412):
        return TransientError(SINK_CONFLICT, f"{text}: {_first_line(exc)}", retry_after=wait)
    return PermanentError(Reason.SINK_REJECTED, f"{text}: {_first_line(exc)}")
