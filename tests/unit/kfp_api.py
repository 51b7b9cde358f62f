"""A Kubeflow Pipelines API server on 127.0.0.1 speaking the v2beta1 REST protocol (grpc-gateway
JSON) for the calls `kfp.Client` makes to submit runs and recurring runs; it records every request.

Covered: GET healthz, GET/POST experiments (list filtered by display_name, create), POST runs,
POST recurringruns. Anything else answers 404 with a grpc-gateway error body, as the real server does
for an unknown route, so a client call the fake does not know fails loudly instead of passing.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"
CREATED_AT = "2026-01-01T00:00:00Z"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeKfp:
    url: str = ""
    multi_user: bool = False
    requests: list[Request] = field(default_factory=list)
    experiments: list[dict] = field(default_factory=list)
    # POST path (under /apis/v2beta1) -> HTTP status to answer with instead, e.g. {"/runs": 403}.
    reject: dict[str, int] = field(default_factory=dict)

    def bodies(self, method: str, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.method == method and r.path == PREFIX + path]


def _handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Request:
            parsed = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=parsed.path,
                query=parse_qs(parsed.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
            state.requests.append(request)
            return request

        def _not_found(self, request: Request) -> None:
            message = f"Not Found: {request.method} {request.path}"
            self._reply(404, {"error": message, "code": 5, "message": message, "details": []})

        def do_GET(self):  # noqa: N802 - http.server's naming
            request = self._record()
            if request.path == f"{PREFIX}/healthz":
                return self._reply(
                    200, {"commit_sha": "fake", "tag_name": "2.5.0", "multi_user": state.multi_user}
                )
            if request.path == f"{PREFIX}/experiments":
                wanted = None
                if "filter" in request.query:
                    predicates = json.loads(request.query["filter"][0])["predicates"]
                    wanted = next(p["stringValue"] for p in predicates if p["key"] == "display_name")
                found = [e for e in state.experiments if wanted is None or e["display_name"] == wanted]
                # grpc-gateway drops empty fields: no match is `{}`, not an empty list.
                return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
            return self._not_found(request)

        def do_POST(self):  # noqa: N802
            request = self._record()
            body = request.body or {}
            status = state.reject.get(request.path.removeprefix(PREFIX))
            if status:
                message = f"{request.path}: refused by the test ({status})"
                return self._reply(status, {"error": message, "code": 7, "message": message, "details": []})
            if request.path == f"{PREFIX}/experiments":
                experiment = {
                    "experiment_id": str(uuid.uuid4()),
                    "display_name": body["display_name"],
                    "namespace": body.get("namespace") or "",
                    "created_at": CREATED_AT,
                    "storage_state": "AVAILABLE",
                }
                state.experiments.append(experiment)
                return self._reply(200, experiment)
            if request.path == f"{PREFIX}/runs":
                run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": CREATED_AT}
                return self._reply(200, run)
            if request.path == f"{PREFIX}/recurringruns":
                status = "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED"
                recurring = {**body, "recurring_run_id": str(uuid.uuid4()), "status": status}
                return self._reply(200, recurring)
            return self._not_found(request)

    return Handler


@contextmanager
def fake_kfp(multi_user: bool = False) -> Iterator[FakeKfp]:
    state = FakeKfp(multi_user=multi_user)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
