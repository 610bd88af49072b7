"""Loopback stand-ins for third-party providers (Twilio, Meta).

Each fake is a real HTTP server on 127.0.0.1 that answers in the provider's documented wire
format, records every request it gets, serves media behind the provider's auth, and can be told
to fail the next requests: `fail("500")`, `fail("429")`, `fail("timeout")` (hold the request
until the client gives up) or a provider error such as an invalid recipient. They also sign the
webhooks they send, as the real provider does, with their own code rather than ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit


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


# --- Twilio -----------------------------------------------------------------------------------


class FakeTwilio(FakeProvider):
    """Twilio's Messages API (2010-04-01) with HTTP basic auth, its error JSON, media behind
    the same auth, and the `X-Twilio-Signature` it puts on webhooks."""

    def __init__(self, account_sid="AC" + "1" * 32, auth_token="twilio-auth-token"):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.next_sids: list[str] = []  # sids to hand out before random ones
        super().__init__()

    @property
    def messages_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def _authorized(self, request: Recorded) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    media_authorized = _authorized

    def answer(self, request: Recorded) -> Answer:
        if request.method != "POST" or request.path != self.messages_path:
            return self._error(404, 20404, "The requested resource was not found")
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        form = request.form()
        sid = self.next_sids.pop(0) if self.next_sids else "SM" + secrets.token_hex(16)
        return Answer.json(
            201,
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": form["To"][0],
                "from": form.get("From", [""])[0],
                "body": form.get("Body", [""])[0],
                "status": "queued",
                "num_media": str(len(form.get("MediaUrl", []))),
                "error_code": None,
            },
        )

    def failure(self, mode: str) -> Answer:
        errors = {
            "500": (500, 20500, "Internal Server Error"),
            "429": (429, 20429, "Too Many Requests"),
            "invalid_recipient": (400, 21211, "Invalid 'To' Phone Number"),
            "unsubscribed": (400, 21610, "Attempt to send to unsubscribed recipient"),
        }
        return self._error(*errors[mode])

    @staticmethod
    def _error(status: int, code: int, message: str) -> Answer:
        return Answer.json(
            status,
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
        )

    def sign(self, url: str, params: dict) -> str:
        """Twilio's scheme: the URL, then each POST field name and value in name order,
        HMAC-SHA1 with the auth token, base64."""
        data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
        digest = hmac.new(self.auth_token.encode(), data.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    def post_webhook(self, client, path: str, params: dict, *, signed_url=None, **headers):
        """Call our webhook with form fields, signed for the URL Twilio believes it called."""
        url = signed_url or f"http://testserver{path}"
        return client.post(
            path,
            data=urlencode(params),
            content_type="application/x-www-form-urlencoded",
            HTTP_X_TWILIO_SIGNATURE=self.sign(url, params),
            **headers,
        )
