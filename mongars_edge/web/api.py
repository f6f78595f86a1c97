"""The native API (/api/*): session, setup, conversations, memories, users, tokens, hardware.

Every route works for the signed-in user's own data only; /api/users is for administrators.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mongars_edge.errors import InvalidRequestError, NotFoundError
from mongars_edge.memory.records import Memory, to_dict
from mongars_edge.web.auth import (
    SESSION_COOKIE,
    ForbiddenError,
    client_address,
    require_user,
)
from mongars_edge.web.http import JsonReply, read_body, read_query
from mongars_edge.web.openai import model_cards
from mongars_edge.web.schemas import native as wire
from mongars_edge.web.schemas.common import Id, Ok
from mongars_edge.web.schemas.routes import ApiRoute, Op

if TYPE_CHECKING:
    from mongars_edge.memory.records import Session, User
    from mongars_edge.runtime import Runtime


class StateConflictError(InvalidRequestError):
    """The request is well formed but the box's state forbids it now (409)."""

    http_status = 409
    kind = "conflict"


class MeshOffError(InvalidRequestError):
    """A mesh route on a box whose mesh is off: the box's state, not a failure (409)."""

    http_status = 409
    kind = "mesh_off"


def _rt(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _int_param(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFoundError(f"no {name.removesuffix('_id')} {raw!r}")
    return int(raw)


def _same_origin(request: Request) -> None:
    """Login and setup carry no CSRF token yet: refuse posts another site's page made."""
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise ForbiddenError("cross-site request refused")


# ---- session, setup, login -------------------------------------------------------------------


def _session_body(user: User | None, session: Session | None, setup: bool) -> dict[str, Any]:
    return {
        "user": None if user is None else user.public(),
        "csrf": None if session is None else session.csrf,
        "setup_required": setup,
    }


async def session_info(request: Request) -> JSONResponse:
    runtime = _rt(request)
    principal = await runtime.accounts.authenticate(request)
    setup = runtime.accounts.setup_code is not None
    if principal is None:
        return JSONResponse(_session_body(None, None, setup))
    return JSONResponse(_session_body(principal.user, principal.session, setup))


def _with_cookie(request: Request, body: dict[str, Any], raw: str, max_age: int) -> JSONResponse:
    response = JSONResponse(body)
    response.set_cookie(
        SESSION_COOKIE,
        raw,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def setup(request: Request) -> JSONResponse:
    _same_origin(request)
    runtime = _rt(request)
    body = await read_body(request, wire.SetupRequest)
    address = client_address(request)
    await runtime.accounts.setup(body.code, body.name, body.password, address)
    raw, session, user = await runtime.accounts.login(body.name, body.password, address)
    answer = _session_body(user, session, False)
    return _with_cookie(request, answer, raw, int(runtime.settings.session_ttl_s))


async def login(request: Request) -> JSONResponse:
    _same_origin(request)
    runtime = _rt(request)
    body = await read_body(request, wire.LoginRequest)
    address = client_address(request)
    raw, session, user = await runtime.accounts.login(body.name, body.password, address)
    answer = _session_body(user, session, runtime.accounts.setup_code is not None)
    return _with_cookie(request, answer, raw, int(runtime.settings.session_ttl_s))


async def logout(request: Request) -> JSONResponse:
    principal = await require_user(request)
    raw = request.cookies.get(SESSION_COOKIE)
    if principal.via == "session" and raw:
        await _rt(request).accounts.logout(raw)
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# ---- conversations ---------------------------------------------------------------------------


async def conversations(request: Request) -> JSONResponse:
    principal = await require_user(request)
    store = _rt(request).memory
    if request.method == "POST":
        body = await read_body(request, wire.NewConversation, required=False)
        created = await store.create_conversation(principal.user_id, body.title)
        return JSONResponse(to_dict(created), status_code=201)
    page = read_query(request, wire.Page)
    found = await store.list_conversations(principal.user_id, limit=page.limit, offset=page.offset)
    return JSONResponse({"data": [to_dict(c) for c in found]})


async def conversation(request: Request) -> Response:
    principal = await require_user(request)
    store = _rt(request).memory
    cid = _int_param(request, "conversation_id")
    if request.method == "DELETE":
        await store.delete_conversation(principal.user_id, cid)
        return Response(status_code=204)
    if request.method == "PATCH":
        body = await read_body(request, wire.Rename)
        await store.rename_conversation(principal.user_id, cid, body.title)
    return JSONResponse(await store.export_conversation(principal.user_id, cid))


async def conversation_export(request: Request) -> JSONResponse:
    principal = await require_user(request)
    cid = _int_param(request, "conversation_id")
    body = await _rt(request).memory.export_conversation(principal.user_id, cid)
    return JSONResponse(
        body, headers={"Content-Disposition": f'attachment; filename="conversation-{cid}.json"'}
    )


# ---- memories --------------------------------------------------------------------------------


def _memory(m: Memory) -> dict[str, Any]:
    return to_dict(m)


async def memories(request: Request) -> JSONResponse:
    principal = await require_user(request)
    store = _rt(request).memory
    if request.method == "POST":
        body = await read_body(request, wire.NewMemory)
        made = await store.add_memory(principal.user_id, body.text, body.kind)
        return JSONResponse(_memory(made), status_code=201)
    page = read_query(request, wire.MemoryPage)
    found = await store.list_memories(
        principal.user_id, kind=page.kind, limit=page.limit, offset=page.offset
    )
    return JSONResponse({"data": [_memory(m) for m in found]})


async def memory_search(request: Request) -> JSONResponse:
    principal = await require_user(request)
    query = read_query(request, wire.SearchQuery)
    hits = await _rt(request).memory.recall(principal.user_id, query.q, limit=query.limit)
    return JSONResponse(
        {
            "data": [
                {
                    "source": h.source,
                    "id": h.id,
                    "text": h.text,
                    "kind": h.kind,
                    "conversation_id": h.conversation_id,
                    "score": h.score,
                }
                for h in hits
            ]
        }
    )


async def memory_item(request: Request) -> Response:
    principal = await require_user(request)
    await _rt(request).memory.delete_memory(principal.user_id, _int_param(request, "memory_id"))
    return Response(status_code=204)


async def export_me(request: Request) -> JSONResponse:
    principal = await require_user(request)
    return JSONResponse(await _rt(request).memory.export_user(principal.user_id))


# ---- users and tokens ------------------------------------------------------------------------


async def users(request: Request) -> JSONResponse:
    await require_user(request, admin=True)
    runtime = _rt(request)
    if request.method == "POST":
        body = await read_body(request, wire.NewUser)
        user = await runtime.accounts.add_user(body.name, body.password, is_admin=body.is_admin)
        return JSONResponse(user.public(), status_code=201)
    return JSONResponse({"data": [u.public() for u in await runtime.memory.list_users()]})


async def user_item(request: Request) -> Response:
    principal = await require_user(request, admin=True)
    user_id = _int_param(request, "user_id")
    if user_id == principal.user_id:
        raise StateConflictError("you cannot delete your own account while signed in with it")
    await _rt(request).memory.delete_user(user_id)
    await asyncio.to_thread(_rt(request).chat.styles.forget, user_id)
    return Response(status_code=204)


def _token(t: Any) -> dict[str, Any]:
    return to_dict(t)


async def tokens(request: Request) -> JSONResponse:
    principal = await require_user(request)
    runtime = _rt(request)
    if request.method == "POST":
        body = await read_body(request, wire.NewToken, required=False)
        raw = await runtime.accounts.create_token(principal.user, body.name[:64])
        listed = await runtime.memory.list_tokens(principal.user_id)
        return JSONResponse(_token(listed[-1]) | {"token": raw}, status_code=201)
    listed = await runtime.memory.list_tokens(principal.user_id)
    return JSONResponse({"data": [_token(t) for t in listed]})


async def token_item(request: Request) -> Response:
    principal = await require_user(request)
    await _rt(request).memory.revoke_token(principal.user_id, _int_param(request, "token_id"))
    return Response(status_code=204)


# ---- the box ---------------------------------------------------------------------------------


async def hardware(request: Request) -> JSONResponse:
    await require_user(request)
    runtime = _rt(request)
    return JSONResponse({"facts": runtime.facts.to_dict(), "profile": runtime.profile.to_dict()})


async def models(request: Request) -> Response:
    """The chat models: what answers now, what the box could load, downloads in progress."""
    await require_user(request)
    runtime = _rt(request)
    manager = runtime.models
    body = wire.ModelsOverview(
        data=model_cards(runtime),
        chat=None,
        load=None,
        recommended=runtime.profile.model or None,
        catalog=await asyncio.to_thread(manager.listing) if manager is not None else [],
    )
    engine = runtime.engine
    if engine is not None and engine.loaded:
        info = engine.info
        load = engine.load()
        body.chat = wire.ChatModelInfo(
            id=info.id,
            architecture=info.architecture,
            n_ctx=info.n_ctx,
            n_params=info.n_params,
            size_bytes=info.size_bytes,
        )
        body.load = wire.EngineLoad(
            queue_depth=load.queue_depth,
            active=load.active,
            n_parallel=load.n_parallel,
            generation_tok_s=load.generation_tok_s,
        )
    return JsonReply(body)


def _manager(runtime: Runtime) -> Any:
    if runtime.models is None:
        raise InvalidRequestError("this box runs no chat model (the model setting is off)")
    return runtime.models


async def model_pull(request: Request) -> JSONResponse:
    """Start downloading a catalog model (`load: true` loads it once it is whole)."""
    await require_user(request, admin=True)
    manager = _manager(_rt(request))
    body = await read_body(request, wire.PullRequest)
    state = manager.pull(body.model, load_when_done=body.load)
    return JSONResponse(state.to_dict(), status_code=202)


async def model_load(request: Request) -> JSONResponse:
    """Make an installed model the one that answers (the previous one finishes its replies)."""
    await require_user(request, admin=True)
    manager = _manager(_rt(request))
    body = await read_body(request, wire.ModelChoice)
    loaded = await manager.load(body.model)
    return JSONResponse({"loaded": loaded})


async def model_item(request: Request) -> Response:
    """Delete a downloaded model, or cancel its download (`/api/models/{id}/pull`)."""
    await require_user(request, admin=True)
    manager = _manager(_rt(request))
    model_id = request.path_params["model_id"]
    if request.url.path.endswith("/pull"):
        manager.cancel_pull(model_id)
        return Response(status_code=204)
    engine = _rt(request).engine
    if engine is not None and engine.loaded and engine.info.id == model_id:
        raise StateConflictError(
            f"{model_id} is the model answering now: load another one before removing it"
        )
    await manager.remove(model_id)
    return Response(status_code=204)


async def adapters(request: Request) -> JSONResponse:
    await require_user(request)
    data_dir = _rt(request).data_dir

    def listing() -> list[Any]:
        from mongars_edge.inference.adapters import AdapterStore

        return AdapterStore(data_dir).list()

    return JSONResponse({"data": [to_dict(a) for a in await asyncio.to_thread(listing)]})


async def peers(request: Request) -> JSONResponse:
    """The mesh report (`mongars-edge peers`), or an empty list when no mesh runs."""
    await require_user(request)
    mesh = getattr(_rt(request), "mesh", None)
    if mesh is None:
        return JSONResponse({"node_id": None, "data": []})
    from mongars_edge.mesh.state import report

    body = report(mesh)
    body.pop("pid", None)
    body["data"] = body.pop("peers")  # a list is `data`, as everywhere in the API
    return JSONResponse(body)


def _mesh_on(runtime: Runtime) -> Any:
    """The running mesh service; MeshOffError when the mesh setting is off."""
    mesh = getattr(runtime, "mesh", None)
    if mesh is None:
        raise MeshOffError("the mesh is off on this box (the mesh setting)")
    return mesh


async def peers_pair(request: Request) -> JSONResponse:
    """Join a mesh with the code a member shows (`mongars-edge pair --join CODE`)."""
    await require_user(request, admin=True)
    runtime = _rt(request)
    body = await read_body(request, wire.PairRequest)  # a bad body is a 400 even mesh off
    mesh = _mesh_on(runtime)
    import socket

    from mongars_edge.mesh import pairing
    from mongars_edge.mesh.errors import MeshError
    from mongars_edge.mesh.peers import split_address
    from mongars_edge.mesh.state import report

    if body.peer:
        given = split_address(body.peer)
        if given is None:
            raise InvalidRequestError(f"peer wants HOST:PORT, not {body.peer!r}", param="peer")
        targets = [given]
    else:
        targets = pairing.unpaired_addresses(report(mesh)["peers"])
        if not targets:
            raise InvalidRequestError("no unpaired box seen on the network; give `peer` HOST:PORT")
    try:
        member = await pairing.join_through(
            targets, body.code, mesh.me, runtime.data_dir, socket.gethostname()
        )
    except MeshError as exc:
        raise InvalidRequestError(str(exc)) from None
    return JSONResponse({"joined_through": member, "node_id": mesh.me.node_id})


async def peer_item(request: Request) -> Response:
    """Revoke a member (`mongars-edge peers remove`)."""
    from mongars_edge.mesh import members

    await require_user(request, admin=True)
    runtime = _rt(request)
    mesh = _mesh_on(runtime)
    prefix = request.path_params["node_id"]
    await asyncio.to_thread(members.revoke, runtime.data_dir, mesh.me, prefix)
    return Response(status_code=204)


def _op(summary: str, ok: Any = None, **more: Any) -> Op:
    return Op(summary, ok=ok, **more)


_DONE = 204
_CONV = {"conversation_id": Id}


def routes() -> list[ApiRoute]:
    return [
        ApiRoute(
            "/api/session",
            session_info,
            {
                "GET": _op(
                    "Who is signed in; whether setup is pending", wire.SessionInfo, public=True
                )
            },
        ),
        ApiRoute(
            "/api/setup",
            setup,
            {
                "POST": _op(
                    "First boot: the console's one-time code creates the first administrator",
                    wire.SessionInfo,
                    body=wire.SetupRequest,
                    public=True,
                )
            },
        ),
        ApiRoute(
            "/api/login",
            login,
            {
                "POST": _op(
                    "Sign in (sets an HttpOnly session cookie)",
                    wire.SessionInfo,
                    body=wire.LoginRequest,
                    public=True,
                )
            },
        ),
        ApiRoute("/api/logout", logout, {"POST": _op("Sign out", Ok)}),
        ApiRoute(
            "/api/conversations",
            conversations,
            {
                "GET": _op(
                    "Your conversations, newest first", wire.ConversationList, query=wire.Page
                ),
                "POST": _op(
                    "Start a conversation",
                    wire.Conversation,
                    status=201,
                    body=wire.NewConversation,
                    body_required=False,
                ),
            },
        ),
        ApiRoute(
            "/api/conversations/{conversation_id}",
            conversation,
            {
                "GET": _op("A conversation with its messages", wire.ConversationExport),
                "PATCH": _op("Rename", wire.ConversationExport, body=wire.Rename),
                "DELETE": _op("Delete", status=_DONE),
            },
            _CONV,
        ),
        ApiRoute(
            "/api/conversations/{conversation_id}/export",
            conversation_export,
            {"GET": _op("Export as JSON (a download)", wire.ConversationExport)},
            _CONV,
        ),
        ApiRoute(
            "/api/memories",
            memories,
            {
                "GET": _op("Your memories", wire.MemoryList, query=wire.MemoryPage),
                "POST": _op(
                    "Remember something", wire.MemoryRecord, status=201, body=wire.NewMemory
                ),
            },
        ),
        ApiRoute(
            "/api/memories/search",
            memory_search,
            {
                "GET": _op(
                    "Search your memories and past messages",
                    wire.SearchResults,
                    query=wire.SearchQuery,
                )
            },
        ),
        ApiRoute(
            "/api/memories/{memory_id}",
            memory_item,
            {"DELETE": _op("Forget a memory", status=_DONE)},
            {"memory_id": Id},
        ),
        ApiRoute(
            "/api/me/export",
            export_me,
            {"GET": _op("Everything the box holds about you", wire.UserExport)},
        ),
        ApiRoute(
            "/api/users",
            users,
            {
                "GET": _op("Users (administrators)", wire.UserList),
                "POST": _op(
                    "Add a user (administrators)", wire.PublicUser, status=201, body=wire.NewUser
                ),
            },
        ),
        ApiRoute(
            "/api/users/{user_id}",
            user_item,
            {"DELETE": _op("Delete a user and all their data (administrators)", status=_DONE)},
            {"user_id": Id},
        ),
        ApiRoute(
            "/api/tokens",
            tokens,
            {
                "GET": _op("Your API tokens (never the secrets)", wire.TokenList),
                "POST": _op(
                    "New API token (shown once)",
                    wire.CreatedToken,
                    status=201,
                    body=wire.NewToken,
                    body_required=False,
                ),
            },
        ),
        ApiRoute(
            "/api/tokens/{token_id}",
            token_item,
            {"DELETE": _op("Revoke a token", status=_DONE)},
            {"token_id": Id},
        ),
        ApiRoute(
            "/api/hardware",
            hardware,
            {"GET": _op("Hardware facts and tuning profile", wire.Hardware)},
        ),
        ApiRoute(
            "/api/models",
            models,
            {
                "GET": _op(
                    "The models: answering now, installable, downloads, engine load",
                    wire.ModelsOverview,
                )
            },
        ),
        ApiRoute(
            "/api/models/pull",
            model_pull,
            {
                "POST": _op(
                    "Download a catalog model in the background (administrators)",
                    wire.PullState,
                    status=202,
                    body=wire.PullRequest,
                )
            },
        ),
        ApiRoute(
            "/api/models/load",
            model_load,
            {
                "POST": _op(
                    "Make an installed model the one that answers (administrators)",
                    wire.Loaded,
                    body=wire.ModelChoice,
                )
            },
        ),
        ApiRoute(
            "/api/models/{model_id}/pull",
            model_item,
            {"DELETE": _op("Cancel a model's download (administrators)", status=_DONE)},
            {"model_id": wire.ModelId},
        ),
        ApiRoute(
            "/api/models/{model_id}",
            model_item,
            {"DELETE": _op("Delete a downloaded model (administrators)", status=_DONE)},
            {"model_id": wire.ModelId},
        ),
        ApiRoute("/api/adapters", adapters, {"GET": _op("Stored LoRA adapters", wire.AdapterList)}),
        ApiRoute("/api/peers", peers, {"GET": _op("Mesh peers", wire.PeersReport)}),
        ApiRoute(
            "/api/peers/pair",
            peers_pair,
            {
                "POST": _op(
                    "Join a mesh with a member's code (administrators)",
                    wire.Paired,
                    body=wire.PairRequest,
                )
            },
        ),
        ApiRoute(
            "/api/peers/{node_id}",
            peer_item,
            {"DELETE": _op("Revoke a member (administrators)", status=_DONE)},
            {"node_id": wire.NodeId},
        ),
    ]
