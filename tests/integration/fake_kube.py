"""A Kubernetes API server on 127.0.0.1 for the calls a training-job launch makes, over real HTTP.

It speaks the REST protocol the kubernetes client uses: custom objects (POST a collection, GET and
DELETE an item), pod lists filtered by `labelSelector`, and pod logs (`container`, `timestamps`,
`sinceSeconds`; 400 while the container has not started). Errors are `Status` objects. Tests play the
operator through `on_create(server, obj)`: add pods, append log lines, set job conditions.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

CUSTOM = re.compile(r"^/apis/([^/]+)/([^/]+)/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?$")
PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods$")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
POD_LOG = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")


def rfc3339_nano(ns: int) -> str:
    """As the kubelet writes them: nanoseconds, trailing zeros dropped."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


@dataclass
class Pod:
    namespace: str
    name: str
    labels: dict[str, str]
    phase: str = "Pending"
    log: list[tuple[int, str]] = field(default_factory=list)  # (wall-clock ns, line)
    spec: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: rfc3339_nano(time.time_ns()).split(".")[0] + "Z")

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "creationTimestamp": self.created,
                "uid": str(uuid.uuid4()),
            },
            "status": {"phase": self.phase},
            **({"spec": self.spec} if self.spec else {}),
        }


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


class FakeKube:
    def __init__(self, on_create: Callable[[FakeKube, dict], None] | None = None):
        self.on_create = on_create
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, namespace, name)
        self.pods: dict[tuple[str, str], Pod] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.unavailable_gets = 0  # the next so many GETs of a custom object answer 503
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        for thread in self.threads:
            thread.join(timeout=60)

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config), encoding="utf-8")
        return path

    # ---------------------------------------------------------------- the operator's side

    def in_background(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        self.threads.append(thread)
        thread.start()

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        phase: str = "Pending",
        spec: dict | None = None,
    ) -> Pod:
        with self.lock:
            pod = self.pods[(namespace, name)] = Pod(namespace, name, labels, phase, spec=spec)
        return pod

    def log(self, pod: Pod, line: str) -> None:
        with self.lock:
            pod.log.append((time.time_ns(), line))

    def set_condition(
        self, plural: str, namespace: str, name: str, kind: str, reason: str = "", message: str = ""
    ):
        with self.lock:
            obj = self.objects.get((plural, namespace, name))
            if obj is None:  # deleted meanwhile
                return
            conditions = obj.setdefault("status", {}).setdefault("conditions", [])
            for condition in conditions:
                if condition["type"] in ("Running", "Created"):
                    condition["status"] = "False"
            conditions.append(
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": rfc3339_nano(time.time_ns()).split(".")[0] + "Z",
                }
            )

    def calls(self, method: str, pattern: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    # ---------------------------------------------------------------- HTTP

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, status: int, body: Any, content_type: str = "application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str):
                self._reply(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": code,
                    },
                )

            def _request(self, method: str) -> Request:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                request = Request(method, url.path, query, body)
                fake.requests.append(request)
                return request

            def do_POST(self):
                request = self._request("POST")
                match = CUSTOM.match(request.path)
                if not match or match.group(5):
                    return self._status(404, "NotFound", f"the server could not find {request.path}")
                _, _, namespace, plural, _ = match.groups()
                obj = json.loads(json.dumps(request.body))  # what is stored evolves; the request does not
                name = obj["metadata"]["name"]
                with fake.lock:
                    if (plural, namespace, name) in fake.objects:
                        return self._status(409, "AlreadyExists", f'{plural} "{name}" already exists')
                    obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion="1")
                    fake.objects[(plural, namespace, name)] = obj
                self._reply(201, obj)
                if fake.on_create:
                    fake.on_create(fake, obj)

            def do_GET(self):
                request = self._request("GET")
                if match := CUSTOM.match(request.path):
                    _, _, namespace, plural, name = match.groups()
                    if fake.unavailable_gets > 0:
                        fake.unavailable_gets -= 1
                        return self._status(503, "ServiceUnavailable", "etcdserver: leader changed")
                    with fake.lock:
                        obj = fake.objects.get((plural, namespace, name))
                        body = json.loads(json.dumps(obj)) if obj else None
                    if body is None:
                        return self._status(404, "NotFound", f'{plural} "{name}" not found')
                    return self._reply(200, body)
                if match := PODS.match(request.path):
                    namespace = match.group(1)
                    wanted = dict(
                        part.split("=", 1)
                        for part in request.query.get("labelSelector", "").split(",")
                        if part
                    )
                    with fake.lock:
                        items = [
                            pod.body()
                            for (ns, _), pod in fake.pods.items()
                            if ns == namespace and all(pod.labels.get(k) == v for k, v in wanted.items())
                        ]
                    return self._reply(
                        200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
                    )
                if match := POD.match(request.path):
                    with fake.lock:
                        pod = fake.pods.get(match.groups())
                        body = pod.body() if pod else None
                    if body is None:
                        return self._status(404, "NotFound", f'pods "{match.group(2)}" not found')
                    return self._reply(200, body)
                if match := POD_LOG.match(request.path):
                    namespace, name = match.groups()
                    with fake.lock:
                        pod = fake.pods.get((namespace, name))
                        lines = list(pod.log) if pod else []
                        phase = pod.phase if pod else ""
                    if pod is None:
                        return self._status(404, "NotFound", f'pods "{name}" not found')
                    if phase == "Pending":
                        return self._status(
                            400, "BadRequest", f'container "pytorch" in pod "{name}" is waiting to start'
                        )
                    since = request.query.get("sinceSeconds")
                    if since:
                        cutoff = time.time_ns() - int(since) * 1_000_000_000
                        lines = [(t, line) for t, line in lines if t >= cutoff]
                    stamped = request.query.get("timestamps", "").lower() in ("true", "1")  # Go ParseBool
                    text = "".join(
                        f"{rfc3339_nano(t)} {line}\n" if stamped else f"{line}\n" for t, line in lines
                    )
                    return self._reply(200, text, "text/plain")
                return self._status(404, "NotFound", f"the server could not find {request.path}")

            def do_DELETE(self):
                request = self._request("DELETE")
                match = CUSTOM.match(request.path)
                if not match or not match.group(5):
                    return self._status(404, "NotFound", request.path)
                _, _, namespace, plural, name = match.groups()
                with fake.lock:
                    removed = fake.objects.pop((plural, namespace, name), None)
                if removed is None:
                    return self._status(404, "NotFound", f'{plural} "{name}" not found')
                self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        return Handler
