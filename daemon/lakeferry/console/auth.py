"""Who may read the console and who may act on it.

- **Bound to loopback** (the default, ``127.0.0.1:9466``) and no token configured: the page is
  open to the machine's users, as the CLI is; a state-changing request still needs the CSRF
  check below (another site open in the operator's browser must not be able to replay the DLQ).
- **Bound anywhere else**: a token is required (the start is refused without one). It comes from
  the environment (:data:`TOKEN_ENV`) or a systemd credential (``LoadCredential=console-token:…``,
  read from ``$CREDENTIALS_DIRECTORY``). A browser signs in once (a session cookie, HttpOnly,
  SameSite=Strict, signed with a secret of this process: a restart signs everyone out); a script
  sends ``Authorization: Bearer <token>``. A configured token is required on loopback too.
- **State-changing requests** (POST) need the token (or its session) where one is configured,
  and a CSRF check: the form's field must be the HMAC of the browser's CSRF cookie under the
  process's secret, and an ``Origin`` header, when the browser sends one, must be this host.
  A bearer token needs no CSRF check (a browser never adds one by itself).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

TOKEN_ENV = "LAKEFERRY_CONSOLE_TOKEN"
CREDENTIAL = "console-token"
SESSION_COOKIE = "lf_session"
CSRF_COOKIE = "lf_csrf"
CSRF_FIELD = "csrf"


def load_token(environ: Mapping[str, str] = os.environ) -> str | None:
    """The console's token: :data:`TOKEN_ENV`, else the systemd credential, else None."""
    value = environ.get(TOKEN_ENV, "").strip()
    if value:
        return value
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL
        try:
            value = path.read_text().strip()
        except OSError:
            return None
        return value or None
    return None


def is_loopback(host: str) -> bool:
    """Whether a bind host only answers this machine (``""`` binds 127.0.0.1 here)."""
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


class Guard:
    """The console's checks, with a secret that lives as long as the process."""

    def __init__(self, token: str | None, *, loopback: bool) -> None:
        self.token = token
        self.loopback = loopback
        self._secret = secrets.token_bytes(32)

    @property
    def open(self) -> bool:
        """Whether pages need no sign-in (loopback, no token configured)."""
        return self.token is None and self.loopback

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def session(self) -> str:
        """The session cookie's value for a browser that gave the token."""
        return self._sign("session", self.token or "")

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, headers: Mapping[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    def signed_in(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        if self.open or self.bearer(headers):
            return True
        given = cookies.get(SESSION_COOKIE, "")
        return self.token is not None and hmac.compare_digest(given, self.session())

    def new_csrf_cookie(self) -> str:
        return secrets.token_urlsafe(24)

    def csrf_field(self, cookie: str) -> str:
        """The value a form must carry for a browser whose CSRF cookie is ``cookie``."""
        return self._sign("csrf", cookie)

    def csrf_ok(self, cookie: str, field: str) -> bool:
        return bool(cookie) and hmac.compare_digest(field, self.csrf_field(cookie))


def same_origin(origin: str | None, host: str | None) -> bool:
    """An ``Origin`` header (absent: the browser did not say) names this ``Host``."""
    if not origin:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc == host
