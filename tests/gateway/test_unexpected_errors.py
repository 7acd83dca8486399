"""A bug that escapes every handler is a 500 that names the request id the logs carry."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from api.gateway.app import create_app
from api.gateway.config import load_settings
from api.ledger.roles import Authority


def test_a_500_answer_names_the_request_id_of_the_log_line(tmp_path: Path) -> None:
    """It said "request_id": null: Starlette renders a 500 outside the middleware that set the id."""

    async def boom(request: Request) -> None:
        raise RuntimeError("a bug")

    settings = load_settings({"TOLLGATE_DATA_DIR": str(tmp_path), "TOLLGATE_JWT_SECRET": "s" * 40})
    nowhere = "postgresql://nobody@127.0.0.1:1/nothing"  # the pools are never opened: no lifespan here
    app = create_app(settings, dict.fromkeys(Authority, nowhere))
    app.router.routes.append(Route("/boom", boom))
    client = TestClient(app, raise_server_exceptions=False)
    reply = client.get("/boom", headers={"X-Request-Id": "req-42"})
    assert reply.status_code == 500
    assert reply.json()["error"] == {
        "code": "internal_error",
        "message": "the gateway failed to answer; the request id identifies it in the logs",
        "request_id": "req-42",
    }
    assert "Traceback" not in reply.text and "a bug" not in reply.text
