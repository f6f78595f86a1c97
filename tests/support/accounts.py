"""Users for the in-process web tests: signed in by cookie (with CSRF) or by bearer token."""

from __future__ import annotations

import httpx

from mongars_edge.runtime import Runtime

PASSWORD = "correct horse battery"


async def login_as(
    client: httpx.AsyncClient, runtime: Runtime, name: str, *, admin: bool = False
) -> str:
    """Create a user, sign the client in; returns the CSRF token."""
    await runtime.accounts.add_user(name, PASSWORD, is_admin=admin)
    response = await client.post("/api/login", json={"name": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    csrf: str = response.json()["csrf"]
    return csrf


async def bearer(runtime: Runtime, name: str, *, admin: bool = False) -> dict[str, str]:
    """Create a user and a token for it; the header that carries the token."""
    user = await runtime.accounts.add_user(name, PASSWORD, is_admin=admin)
    token = await runtime.accounts.create_token(user, "test")
    return {"Authorization": f"Bearer {token}"}
