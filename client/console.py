"""The web console: ``python orchestrator.py console`` serves a page of the deployments (steps, live traffic
weights, analysis charts against their thresholds, the judgement behind each decision, events), the
environments, and the actions promote, pause, resume, abort and roll back.

Each browser request carries the person's own token in an ``Authorization: Bearer`` header (the page keeps
it in the tab's session storage after the sign-in form); the server calls the driver API with that token,
so the actors check the person and their role exactly as for the CLI, and a refusal comes back as the
actors worded it. The token is never written back to the page, the logs or any answer. Live updates come
as a stream of server-sent events read with ``fetch`` (so that it carries the header too).

It runs where the driver runs: on a laptop (embedded Ray), or on the cluster as a job
(``ray job submit -- python orchestrator.py console --host 0.0.0.0``). Plain aiohttp (it comes with Ray),
one HTML page, one script, one style sheet; no build step.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from client.driver import DeploymentOrchestrator
from engine.control import ControlRefused
from engine.identity import AccessDenied
from engine.journal import UnknownDeploymentError
from engine.views import deployment_view, status_view

log = logging.getLogger("orchestrator.console")
STATIC = Path(__file__).resolve().parent / "console"
ACTIONS = {
    "promote": "promote",
    "promote-full": "promote_full",
    "pause": "pause",
    "resume": "resume",
    "abort": "abort",
    "rollback": "rollback",
}
STREAM_INTERVAL_S = 1.0
STREAM_MAX_S = 3600.0  # a stream ends after an hour; the page opens a new one
HISTORY = 50
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ORCH = web.AppKey("orchestrator", DeploymentOrchestrator)


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "sign in with your personal token"}), content_type="application/json"
        )
    return token.strip()


def _caller(request: web.Request) -> DeploymentOrchestrator:
    return request.app[ORCH].as_caller(_bearer(request))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals and mistakes as JSON the page shows; security headers on everything."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        response = error
    except AccessDenied as error:  # also a refusal raised inside an actor (Ray's error is an instance of it)
        response = _error(403, f"refused: {getattr(error, 'cause', error)}")
    except (UnknownDeploymentError, KeyError) as error:
        response = _error(404, str(error).strip("'\""))
    except (ControlRefused, ValueError) as error:
        response = _error(409, str(getattr(error, "cause", error)))
    response.headers.update(SECURITY_HEADERS)
    return response


async def _page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def _no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def _whoami(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_caller(request).whoami))


def _overview(orch: DeploymentOrchestrator) -> dict[str, Any]:
    deployments = [status_view(s) for s in reversed(orch.history(limit=HISTORY))]
    environments = []
    for environment in orch.environments():
        live = [d for d in deployments if d["environment"] == environment.name and d["phase"] == "succeeded"]
        environments.append(
            {
                "name": environment.name,
                "complianceLevel": environment.compliance_level.value,
                "approvalRequired": environment.approval_workflow.required,
                "health": _health(orch, environment.name),
                "services": sorted({d["service"] for d in live}),
            }
        )
    return {"deployments": deployments, "environments": environments, "time": time.time()}


def _health(orch: DeploymentOrchestrator, environment: str) -> dict[str, Any] | None:
    """DO-001's health of a monitored environment; None when it is not monitored."""
    try:
        health = orch.get_environment_health(environment)
    except ValueError:
        return None
    except Exception as error:  # a refusal or a worker's trouble: shown, never fatal to the page
        return {"healthy": None, "error": str(getattr(error, "cause", error))}
    return {"healthy": health.healthy, "checkedAt": health.checked_at}


def _detail(orch: DeploymentOrchestrator, deployment_id: str) -> dict[str, Any]:
    return deployment_view(orch.status(deployment_id), orch.events(deployment_id))


async def _overview_handler(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(_overview, _caller(request)))


async def _deployment(request: web.Request) -> web.Response:
    detail = await asyncio.to_thread(_detail, _caller(request), request.match_info["id"])
    return web.json_response(detail)


async def _action(request: web.Request) -> web.Response:
    action = ACTIONS.get(request.match_info["action"])
    if action is None:
        return _error(404, f"unknown action '{request.match_info['action']}': use {', '.join(ACTIONS)}")
    body = await request.json() if request.can_read_body else {}
    reason = (
        str(body.get("reason", "") if isinstance(body, dict) else "")[:500] or f"{action} from the console"
    )
    orch = _caller(request)
    status = await asyncio.to_thread(orch.control, request.match_info["id"], action, reason)
    return web.json_response(status_view(status))


async def _stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the overview (and one deployment's detail) whenever they change."""
    orch = _caller(request)
    deployment = request.query.get("deployment") or None
    await asyncio.to_thread(orch.whoami)  # a bad token is refused before the stream starts
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **SECURITY_HEADERS})
    await response.prepare(request)
    last = ""
    started = time.monotonic()
    while time.monotonic() - started < STREAM_MAX_S:
        try:
            snapshot = await asyncio.to_thread(_snapshot, orch, deployment)
        except Exception as error:  # shown on the page; the stream goes on
            snapshot = {"error": str(getattr(error, "cause", error))}
        text = json.dumps(snapshot, sort_keys=True, default=str)
        if text != last:
            last = text
            await response.write(f"data: {text}\n\n".encode())
        await asyncio.sleep(STREAM_INTERVAL_S)
    return response


def _snapshot(orch: DeploymentOrchestrator, deployment: str | None) -> dict[str, Any]:
    snapshot = _overview(orch)
    if deployment is not None:
        snapshot["detail"] = _detail(orch, deployment)
    return snapshot


def make_app(orch: DeploymentOrchestrator) -> web.Application:
    app = web.Application(middlewares=[_answers], client_max_size=64 * 1024)
    app[ORCH] = orch
    app.router.add_get("/", _page)
    app.router.add_get("/favicon.ico", _no_icon)
    app.router.add_static("/static/", STATIC, show_index=False)
    app.router.add_get("/api/whoami", _whoami)
    app.router.add_get("/api/overview", _overview_handler)
    app.router.add_get("/api/deployments/{id}", _deployment)
    app.router.add_post("/api/deployments/{id}/{action}", _action)
    app.router.add_get("/api/stream", _stream)
    return app


async def start(orch: DeploymentOrchestrator, host: str, port: int) -> web.AppRunner:
    """Serve the console; returns the runner (``await runner.cleanup()`` stops it)."""
    runner = web.AppRunner(make_app(orch), access_log=None)  # no request log: nothing of a request kept
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def serve(orch: DeploymentOrchestrator, host: str = "127.0.0.1", port: int = 8470) -> None:
    """Serve until interrupted (the ``console`` command)."""

    async def forever() -> None:
        runner = await start(orch, host, port)
        print(
            f"console: http://{host}:{port}/ (sign in with your personal token; Ctrl-C stops it)", flush=True
        )
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(forever())
