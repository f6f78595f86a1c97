"""Accounts: first-boot setup, sessions, CSRF, throttling, tokens, the local admin channel."""

from __future__ import annotations

import os
import stat
import time

import httpx
import pytest

from mongars_edge.datadir import DataDir
from mongars_edge.runtime import Runtime
from mongars_edge.web.auth import Throttle, ThrottledError, digest
from tests.support.accounts import PASSWORD, bearer, login_as


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


async def test_first_boot_setup_with_the_console_code(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    info = (await client.get("/api/session")).json()
    assert info == {"user": None, "csrf": None, "setup_required": True}
    code = runtime.accounts.setup_code
    assert code is not None
    wrong = await client.post(
        "/api/setup", json={"code": "AAAA-AAAA", "name": "ana", "password": PASSWORD}
    )
    assert wrong.status_code == 401
    assert _error(wrong)["type"] == "authentication_error"
    done = await client.post(
        "/api/setup", json={"code": code.lower(), "name": "ana", "password": PASSWORD}
    )
    assert done.status_code == 200, done.text
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    assert done.json()["user"]["is_admin"] is True
    assert (await client.get("/api/session")).json()["user"]["name"] == "ana"
    again = await client.post(
        "/api/setup", json={"code": code, "name": "bob", "password": PASSWORD}
    )
    assert again.status_code == 403
    assert runtime.accounts.setup_code is None


async def test_no_setup_code_once_an_admin_exists(data_dir: object, runtime: Runtime) -> None:
    await runtime.accounts.add_user("root", PASSWORD, is_admin=True)
    assert await runtime.accounts.admin_exists()


async def test_login_throttled_per_account_and_address(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await runtime.accounts.add_user("ana", PASSWORD)
    for _ in range(runtime.settings.login_max_failures):
        bad = await client.post("/api/login", json={"name": "ana", "password": "nope nope"})
        assert bad.status_code == 401
    locked = await client.post("/api/login", json={"name": "ana", "password": PASSWORD})
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) >= 1
    assert _error(locked)["type"] == "rate_limit_error"


def test_throttle_window_slides() -> None:
    now = [0.0]
    throttle = Throttle(2, 10.0, clock=lambda: now[0])
    throttle.fail("ip:a")
    throttle.fail("ip:a")
    with pytest.raises(ThrottledError) as info:
        throttle.check("ip:a", "user:x")
    assert info.value.retry_after_s == pytest.approx(10.0)
    throttle.check("ip:b")
    now[0] = 10.5
    throttle.check("ip:a")


async def test_csrf_required_for_session_writes(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    csrf = await login_as(client, runtime, "ana")
    refused = await client.post("/api/conversations", json={"title": "x"})
    assert refused.status_code == 403
    assert "CSRF" in str(_error(refused)["message"])
    forged = await client.post(
        "/api/conversations", json={"title": "x"}, headers={"X-CSRF-Token": "forged"}
    )
    assert forged.status_code == 403
    made = await client.post(
        "/api/conversations", json={"title": "x"}, headers={"X-CSRF-Token": csrf}
    )
    assert made.status_code == 201
    # Reads need no CSRF token.
    assert (await client.get("/api/conversations")).status_code == 200


async def test_cross_site_login_and_form_posts_are_refused(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await runtime.accounts.add_user("ana", PASSWORD)
    cross = await client.post(
        "/api/login",
        json={"name": "ana", "password": PASSWORD},
        headers={"Origin": "http://evil.example"},
    )
    assert cross.status_code == 403
    form = await client.post("/api/login", data={"name": "ana", "password": PASSWORD})
    assert form.status_code == 400


async def test_expired_and_logged_out_sessions_are_refused(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    user = await runtime.accounts.add_user("ana", PASSWORD)
    await runtime.memory.create_session(user.id, digest("old"), "c", time.time() - 1)
    client.cookies.set("mongars_session", "old")
    assert (await client.get("/v1/models")).status_code == 401
    client.cookies.clear()
    csrf = await login_as(client, runtime, "bob")
    assert (await client.get("/v1/models")).status_code == 200
    out = await client.post("/api/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 200
    assert (await client.get("/v1/models")).status_code == 401


async def test_bearer_tokens_are_hashed_and_revocable(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    headers = await bearer(runtime, "ana")
    made = await client.post("/api/tokens", json={"name": "script"}, headers=headers)
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith("mge_")
    listed = (await client.get("/api/tokens", headers=headers)).json()["data"]
    assert all("token" not in t and "token_hash" not in t for t in listed)
    other = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/v1/models", headers=other)).status_code == 200
    gone = await client.delete(f"/api/tokens/{made.json()['id']}", headers=headers)
    assert gone.status_code == 204
    revoked = await client.get("/v1/models", headers=other)
    assert revoked.status_code == 401
    assert revoked.headers["www-authenticate"].startswith("Bearer")
    assert _error(revoked)["code"] == "invalid_api_key"
    for bad in ("Bearer nope", "Basic YTpi", "Bearer "):
        assert (await client.get("/v1/models", headers={"Authorization": bad})).status_code == 401


async def test_local_admin_token_file(client: httpx.AsyncClient, runtime: Runtime) -> None:
    path = DataDir(runtime.data_dir).local_admin_token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    token = path.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    users = await client.get("/api/users", headers=headers)
    assert users.status_code == 200
    assert [u["name"] for u in users.json()["data"]] == ["console"]
    # The console principal has no password: it cannot sign in to the page.
    login = await client.post("/api/login", json={"name": "console", "password": ""})
    assert login.status_code in (400, 401)
    # ...and it does not count as the first administrator.
    assert runtime.accounts.setup_code is not None


async def test_users_see_only_their_own_data(client: httpx.AsyncClient, runtime: Runtime) -> None:
    ana = await bearer(runtime, "ana")
    bob = await bearer(runtime, "bob")
    made = await client.post("/api/conversations", json={"title": "ana's"}, headers=ana)
    cid = made.json()["id"]
    assert (await client.get(f"/api/conversations/{cid}", headers=ana)).status_code == 200
    for method in ("GET", "DELETE"):
        response = await client.request(method, f"/api/conversations/{cid}", headers=bob)
        assert response.status_code == 404
    assert (await client.get("/api/conversations", headers=bob)).json()["data"] == []
    assert (await client.get("/api/users", headers=bob)).status_code == 403
    assert (await client.get("/metrics", headers=bob)).status_code == 403
    mem = await client.post("/api/memories", json={"text": "ana likes tea"}, headers=ana)
    assert mem.status_code == 201
    assert (await client.get("/api/memories", headers=bob)).json()["data"] == []
    gone = await client.delete(f"/api/memories/{mem.json()['id']}", headers=bob)
    assert gone.status_code == 404


async def test_admin_manages_users(client: httpx.AsyncClient, runtime: Runtime) -> None:
    admin = await bearer(runtime, "root", admin=True)
    made = await client.post(
        "/api/users", json={"name": "kid", "password": PASSWORD}, headers=admin
    )
    assert made.status_code == 201
    assert "password_hash" not in made.json()
    dup = await client.post("/api/users", json={"name": "kid", "password": PASSWORD}, headers=admin)
    assert dup.status_code == 409
    short = await client.post("/api/users", json={"name": "x", "password": "short"}, headers=admin)
    assert short.status_code == 400
    for name in ("console", "Voice"):  # the box's own administrator, the voice agent's user
        reserved = await client.post(
            "/api/users", json={"name": name, "password": PASSWORD}, headers=admin
        )
        assert reserved.status_code == 400, name
    gone = await client.delete(f"/api/users/{made.json()['id']}", headers=admin)
    assert gone.status_code == 204
