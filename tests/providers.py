"""Loopback stand-ins for third-party providers (Twilio, Meta).

Each fake is a real HTTP server on 127.0.0.1 that answers in the provider's documented wire
format, records every request it gets, serves media behind the provider's auth, and can be told
to fail the next requests: `fail("500")`, `fail("429")`, `fail("timeout")` (hold the request
until the client gives up) or a provider error such as an invalid recipient. They also sign the
webhooks they send, as the real provider does, with their own code rather than ours.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def form(self) -> dict:
        """Form fields, each the list of its values (Twilio repeats MediaUrl)."""
        return parse_qs(self.body.decode(), keep_blank_values=True)


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data) -> Answer:
        return cls(status, json.dumps(data).encode())


class FakeProvider:
    """Subclasses implement `answer(request) -> Answer` for the provider's API, and
    `failure(mode) -> Answer` for the provider's own error shapes."""

    def __init__(self):
        self.requests: list[Recorded] = []
        self.media: dict[str, tuple[bytes, str]] = {}  # path -> (content, content type)
        self._failures: deque[str] = deque()
        self._released = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                request = Recorded(
                    method=self.command,
                    path=parts.path,
                    query={k: v[0] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                answer = fake._dispatch(request)
                if answer is None:  # "timeout": hold the connection until released
                    fake._released.wait(30)
                    return
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self._released.set()
        self.server.shutdown()
        self.server.server_close()

    def fail(self, *modes: str) -> None:
        """Make the next API calls fail, one mode per call, in order."""
        with self._lock:
            self._failures.extend(modes)

    def calls(self, method: str = "POST") -> list[Recorded]:
        """The API calls received (media downloads and other methods left out)."""
        return [r for r in self.requests if r.method == method and r.path not in self.media]

    def _dispatch(self, request: Recorded) -> Answer | None:
        with self._lock:
            self.requests.append(request)
            if request.path in self.media:
                return self.serve_media(request)
            mode = self._failures.popleft() if self._failures else ""
        if mode == "timeout":
            return None
        if mode:
            return self.failure(mode)
        return self.answer(request)

    def serve_media(self, request: Recorded) -> Answer:
        content, content_type = self.media[request.path]
        if not self.media_authorized(request):
            return Answer(401, b"unauthorized", "text/plain")
        return Answer(200, content, content_type)

    def media_authorized(self, request: Recorded) -> bool:
        return True

    def answer(self, request: Recorded) -> Answer:
        raise NotImplementedError

    def failure(self, mode: str) -> Answer:
        if mode == "500":
            return Answer.json(500, {"message": "Internal error"})
        raise ValueError(f"unknown failure mode {mode!r}")
