"""Bearer-token authentication, role checks, failed-login slow-down and the audit log.

Every API route declares the roles that may call it (``room_api.app.ROUTES``). The middleware
answers 401 when there is no valid token (``WWW-Authenticate: Bearer``), 403 when the token's
role may not use the route, and 429 with ``Retry-After`` to a *failed* attempt from an address that
keeps failing. A valid token is never refused for its address's failures: behind a proxy or NAT one
client guessing tokens must not stop every nurse station. Every state-changing request (anything
but GET/HEAD/OPTIONS), allowed or not, is written to the audit log with the token's name.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web

from controller.security.tokens import AuditEntry, Principal
from controller.store import StorageError

log = logging.getLogger("smartroom.auth")

FAIL_WINDOW_MS = 60_000      # failures counted over the last minute
FAIL_FREE = 5                # this many failures a minute are typos, not an attack
BACKOFF_MAX_S = 300          # the longest an address is made to wait
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class FailedAuthLimiter:
    """Per-address back-off of failed attempts: after ``FAIL_FREE`` failures within a minute, each
    further failure doubles the wait (1 s, 2 s, 4 s … up to 5 min) during which that address's
    failed attempts answer 429 instead of 401. Valid tokens are not limited, and a success does not
    reset the count (a nurse logging in at a shared address must not reopen the door to a guesser)."""

    clock: Callable[[], int]
    _fails: dict[str, deque[int]] = field(default_factory=dict)
    _blocked_until: dict[str, int] = field(default_factory=dict)
    blocked_total: int = 0

    def retry_after_s(self, remote: str) -> int:
        until = self._blocked_until.get(remote)
        if until is None:
            return 0
        wait_ms = until - self.clock()
        if wait_ms <= 0:
            del self._blocked_until[remote]
            return 0
        return -(-wait_ms // 1000)

    def failed(self, remote: str) -> int:
        """Count a failed attempt; returns the seconds this address was already made to wait
        (0: answer 401; more: the attempt came during a back-off, answer 429 and count it)."""
        wait_s = self.retry_after_s(remote)
        now = self.clock()
        fails = self._fails.setdefault(remote, deque())
        fails.append(now)
        while fails and fails[0] <= now - FAIL_WINDOW_MS:
            fails.popleft()
        over = len(fails) - FAIL_FREE
        if over >= 0:
            self._blocked_until[remote] = now + min(2 ** over, BACKOFF_MAX_S) * 1000
        if wait_s:
            self.blocked_total += 1
        if len(self._fails) > 10_000:  # a scan from many addresses must not grow memory without bound
            oldest = next(iter(self._fails))
            self._fails.pop(oldest)
            self._blocked_until.pop(oldest, None)
        return wait_s


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


ErrorFactory = Callable[[int, str, str], web.HTTPException]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_middleware(*, roles_for: Callable[[web.Request], frozenset[str] | None],
                    find_token: Callable[[str], Awaitable[Principal | None]],
                    audit: Callable[[AuditEntry], Awaitable[None]],
                    limiter: FailedAuthLimiter, error: ErrorFactory, principal_key: web.AppKey,
                    clock: Callable[[], int]):
    """The auth middleware; ``roles_for`` gives a route's roles, or None for a public route."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        roles = roles_for(request)
        if roles is None:
            return await handler(request)
        remote = request.remote or "?"
        principal: Principal | None = None
        status = 500
        try:
            secret = bearer(request)
            principal = await find_token(secret) if secret else None
            if principal is None:
                wait_s = limiter.failed(remote)
                if wait_s:
                    status = 429
                    exc = error(429, "too_many_failures",
                                f"too many failed logins from {remote}; try again in {wait_s} s")
                    exc.headers["Retry-After"] = str(wait_s)
                    raise exc
                status = 401
                exc = error(401, "unauthorized", "a valid bearer token is required "
                            "(Authorization: Bearer srt_…; tokens come from 'smartroom token create')")
                exc.headers["WWW-Authenticate"] = 'Bearer realm="smartroom"'
                raise exc
            if principal.role not in roles:
                status = 403
                raise error(403, "forbidden", f"the {principal.role} role may not do this; "
                            f"it needs one of: {', '.join(sorted(roles))}")
            request[principal_key] = principal
            response = await handler(request)
            status = response.status
            return response
        except Exception as exc:  # HTTP errors, and room refusals the error middleware turns into them
            status = getattr(exc, "status", 500)
            raise
        finally:
            if request.method not in READ_METHODS:
                entry = AuditEntry(clock(), principal.name if principal else "(no valid token)",
                                   principal.role if principal else None, request.method, request.path_qs,
                                   status, remote)
                try:
                    await audit(entry)
                except StorageError as exc:  # the storage alarm is up; the lost entry is still logged
                    log.error("could not write the audit entry %s: %s", entry, exc)
                except Exception:  # the audit store failing must be loud, but not turn into a 500
                    log.exception("could not write the audit entry %s", entry)

    return auth_middleware
