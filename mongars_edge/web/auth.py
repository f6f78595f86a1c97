"""Accounts at the web edge: passwords, API tokens, sessions, CSRF, login throttling, setup code.

Secrets never reach the database in clear: passwords are argon2id hashes, API tokens and session
ids are stored as SHA-256 digests (they are 256-bit random, so a fast hash is enough). Browser
sessions are HttpOnly SameSite=Strict cookies; a state-changing request made with a session must
also carry the session's CSRF token in the `X-CSRF-Token` header. Bearer tokens are not ambient
credentials, so they need no CSRF token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import hashlib
import hmac
import logging
import os
import secrets
import shlex
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from starlette.requests import HTTPConnection

from mongars_edge.datadir import DataDir
from mongars_edge.errors import InvalidRequestError, MongarsError

if TYPE_CHECKING:
    from mongars_edge.memory.records import Session, User
    from mongars_edge.memory.store import MemoryStore
    from mongars_edge.settings import Settings

log = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "mge_"  # noqa: S105 - a prefix, not a secret
SESSION_COOKIE: Final = "mongars_session"
CSRF_HEADER: Final = "x-csrf-token"
CONSOLE_USER: Final = "console"
#: The Wyoming conversation agent answers as this user (speech/agent.py VOICE_USER).
VOICE_USER: Final = "voice"
RESERVED_NAMES: Final = frozenset([CONSOLE_USER, VOICE_USER])
MIN_PASSWORD: Final = 8
MAX_PASSWORD: Final = 1024
_SAFE_METHODS: Final = frozenset(["GET", "HEAD", "OPTIONS"])
_SETUP_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
_THROTTLE_KEYS_MAX: Final = 10_000
_hasher = PasswordHasher()


class AuthError(MongarsError):
    """No valid credentials were given."""

    http_status = 401
    kind = "invalid_api_key"


class ForbiddenError(MongarsError, PermissionError):
    """Authenticated, but not allowed to do this (not admin, bad CSRF token)."""

    http_status = 403
    kind = "permission_denied"


class ThrottledError(MongarsError):
    """Too many failed attempts; wait `retry_after_s` seconds."""

    http_status = 429
    kind = "too_many_attempts"

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many failed attempts; try again in {retry_after_s:.0f} s")


def digest(secret: str) -> str:
    """How a token or session id is stored."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_password_rules(password: str) -> None:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequestError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters long")


def hash_password(password: str) -> str:
    """argon2id hash (blocking, ~50-100 ms by design: call in a thread from async code)."""
    check_password_rules(password)
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Blocking, like hash_password. A user without a password never matches."""
    if not password_hash:
        # Spend the same time as a real check so names cannot be probed by timing.
        with contextlib.suppress(VerificationError, InvalidHashError):
            _hasher.verify(_dummy_hash(), password)
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_hex(8))


def check_name(name: str) -> str:
    if not isinstance(name, str):
        raise InvalidRequestError("a user name is text")
    if name.strip().lower() in RESERVED_NAMES:
        raise InvalidRequestError(f"the name {name.strip()!r} is reserved")
    return name


class Throttle:
    """Failures per key (an address, an account) in a sliding window; too many lock the key."""

    def __init__(
        self, max_failures: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def check(self, *keys: str) -> None:
        """Raise ThrottledError if any key is locked."""
        now = self._clock()
        for key in keys:
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                raise ThrottledError(max(1.0, times[0] + self.window_s - now))

    def fail(self, *keys: str) -> None:
        now = self._clock()
        if len(self._failures) > _THROTTLE_KEYS_MAX:
            for key in list(self._failures):
                self._recent(key, now)
        for key in keys:
            times = self._failures.setdefault(key, deque())
            times.append(now)
            while len(times) > self.max_failures:
                times.popleft()

    def clear(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


@dataclass(frozen=True)
class Principal:
    """Who is asking, and how they proved it."""

    user: User
    via: Literal["token", "session", "local"]
    session: Session | None = None

    @property
    def user_id(self) -> int:
        return self.user.id

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else "unknown"


class Accounts:
    """The box's account service: open with `async with Accounts.open(store, settings, dir)`."""

    def __init__(self, store: MemoryStore, settings: Settings, data_dir: Path) -> None:
        self.store = store
        self.settings = settings
        self.data_dir = data_dir
        self.throttle = Throttle(settings.login_max_failures, settings.login_lockout_s)
        self.setup_code: str | None = None
        self._local_token = ""
        self._setup_lock = asyncio.Lock()
        self._touched: dict[int, float] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, store: MemoryStore, settings: Settings, data_dir: Path
    ) -> AsyncIterator[Accounts]:
        accounts = cls(store, settings, data_dir)
        await accounts.start()
        try:
            yield accounts
        finally:
            await asyncio.to_thread(accounts._remove_local_token)

    async def start(self) -> None:
        self._local_token = new_api_token()
        await asyncio.to_thread(self._write_local_token)
        if not await self.admin_exists():
            self.setup_code = _new_setup_code()
            log.warning(
                "no administrator yet: open the chat page at /setup and enter the one-time "
                "setup code %s (or run `mongars-edge users add NAME --admin --password-stdin "
                "--data-dir %s`)",
                self.setup_code,
                shlex.quote(str(self.data_dir)),
            )

    @property
    def local_token_path(self) -> Path:
        return DataDir(self.data_dir).local_admin_token

    def _write_local_token(self) -> None:
        path = self.local_token_path
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.fchmod(fd, 0o640)
            with contextlib.suppress(KeyError, PermissionError):
                os.fchown(fd, -1, grp.getgrnam("mongars").gr_gid)
            os.write(fd, (self._local_token + "\n").encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _remove_local_token(self) -> None:
        with contextlib.suppress(OSError):
            if self.local_token_path.read_text().strip() == self._local_token:
                self.local_token_path.unlink()

    async def admin_exists(self) -> bool:
        """An administrator who can log in (the console principal does not count)."""
        return any(
            u.is_admin and u.password_hash and u.name != CONSOLE_USER
            for u in await self.store.list_users()
        )

    # ---- creating accounts ---------------------------------------------------------------------

    async def add_user(self, name: str, password: str, *, is_admin: bool = False) -> User:
        check_name(name)
        password_hash = await asyncio.to_thread(hash_password, password)
        return await self.store.create_user(name, password_hash, is_admin=is_admin)

    async def setup(self, code: str, name: str, password: str, address: str) -> User:
        """First boot: the one-time code from the console creates the first administrator."""
        self.throttle.check(f"ip:{address}", "setup")
        async with self._setup_lock:
            expected = self.setup_code
            if expected is None:
                raise ForbiddenError("this box is already set up; log in instead")
            given = "".join(ch for ch in str(code).upper() if ch.isalnum())
            if not hmac.compare_digest(given.encode(), expected.replace("-", "").encode()):
                self.throttle.fail(f"ip:{address}", "setup")
                raise AuthError("wrong setup code; it is printed in the console and the journal")
            user = await self.add_user(name, password, is_admin=True)
            self.setup_code = None
            log.warning("first administrator %r created; the setup code is spent", user.name)
            return user

    async def create_token(self, user: User, name: str = "api") -> str:
        """A new bearer token for `user`; only its digest is stored. Returns the token."""
        token = new_api_token()
        await self.store.create_token(user.id, name[:64] or "api", digest(token))
        return token

    # ---- sessions ----------------------------------------------------------------------------

    async def login(self, name: str, password: str, address: str) -> tuple[str, Session, User]:
        """Check a password; returns (cookie value, session, user). Throttled per IP and name."""
        keys = (f"ip:{address}", f"user:{str(name).strip().lower()}")
        self.throttle.check(*keys)
        user = await self.store.get_user_by_name(str(name).strip())
        ok = await asyncio.to_thread(
            verify_password, user.password_hash if user else None, str(password)
        )
        if user is None or not ok:
            self.throttle.fail(*keys)
            raise AuthError("wrong user name or password")
        self.throttle.clear(*keys)
        raw = secrets.token_urlsafe(32)
        session = await self.store.create_session(
            user.id,
            digest(raw),
            secrets.token_urlsafe(24),
            time.time() + self.settings.session_ttl_s,
        )
        return raw, session, user

    async def logout(self, raw: str) -> None:
        await self.store.delete_session(digest(raw))

    # ---- who is asking -------------------------------------------------------------------------

    async def authenticate(self, conn: HTTPConnection) -> Principal | None:
        """The principal behind a request's bearer token or session cookie, or None."""
        header = conn.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if header:
            if scheme.lower() != "bearer" or not credential.strip():
                raise AuthError("use `Authorization: Bearer <token>`")
            return await self._from_token(credential.strip())
        raw = conn.cookies.get(SESSION_COOKIE)
        if raw:
            session = await self.store.get_session(digest(raw))
            if session is None:
                return None
            user = await self.store.get_user(session.user_id)
            return None if user is None else Principal(user, "session", session)
        return None

    async def _from_token(self, token: str) -> Principal:
        if self._local_token and hmac.compare_digest(token.encode(), self._local_token.encode()):
            return Principal(await self._console_user(), "local")
        found = await self.store.find_token(digest(token))
        user = None if found is None else await self.store.get_user(found.user_id)
        if found is None or user is None:
            raise AuthError("invalid or revoked API token")
        # Record use at most once a minute per token: one write per request would be waste.
        now = time.monotonic()
        if now - self._touched.get(found.id, -1e9) > 60:
            self._touched[found.id] = now
            await self.store.touch_token(found.id)
        return Principal(user, "token")

    async def _console_user(self) -> User:
        user = await self.store.get_user_by_name(CONSOLE_USER)
        if user is None:
            from mongars_edge.memory.accounts import UserExistsError

            with contextlib.suppress(UserExistsError):
                await self.store.create_user(CONSOLE_USER, None, is_admin=True)
            user = await self.store.require_user(CONSOLE_USER)
        return user


def _new_setup_code() -> str:
    chars = "".join(secrets.choice(_SETUP_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


async def require_user(conn: HTTPConnection, *, admin: bool = False) -> Principal:
    """The authenticated principal of a request, or AuthError / ForbiddenError.

    Route handlers of every web module (chat, API, audio) call this first.
    """
    accounts: Accounts = conn.app.state.runtime.accounts
    principal = await accounts.authenticate(conn)
    if principal is None:
        raise AuthError("log in or send `Authorization: Bearer <token>`")
    method = conn.scope.get("method", "GET")
    if principal.via == "session" and method not in _SAFE_METHODS:
        assert principal.session is not None
        sent = conn.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), principal.session.csrf.encode()):
            raise ForbiddenError("missing or wrong CSRF token (reload the page)")
    if admin and not principal.is_admin:
        raise ForbiddenError("only an administrator can do this")
    return principal
