"""Loopback stand-ins for third-party providers (Twilio, Meta).

Each fake is a real HTTP server on 127.0.0.1 that answers in the provider's documented wire
format, records every request it gets, serves media behind the provider's auth, and can be told
to fail the next requests: `fail("500")`, `fail("429")`, `fail("timeout")` (hold the request
until the client gives up), `fail("slow")` (answer, but only once `go_on` is set),
`fail("hang_up")` (close the connection without answering), `fail("answer_lost")` (do what
was asked, then hang up) or a provider error such as an invalid recipient. They also sign the
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
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
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


HANG_UP = Answer(0)  # close the connection without a word


class FakeProvider:
    """Subclasses implement `answer(request) -> Answer` for the provider's API, and
    `failure(mode) -> Answer` for the provider's own error shapes."""

    def __init__(self):
        self.requests: list[Recorded] = []
        self.media: dict[str, tuple[bytes, str]] = {}  # path -> (content, content type)
        self._failures: deque[str] = deque()
        self._released = threading.Event()
        self.called = threading.Event()  # set by every API call, for another process's calls
        self.go_on = threading.Event()  # lets a "slow" call answer
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
                if answer is HANG_UP:
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_DELETE = _handle  # noqa: N815 - http.server's names

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
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
            self.called.set()
            mode = self._failures.popleft() if self._failures else ""
        if mode == "timeout":
            return None
        if mode in ("hang_up", "answer_lost"):
            if mode == "answer_lost":
                self.answer(request)
            return HANG_UP
        if mode == "slow":  # took the request, answers once the test says so
            self.go_on.wait(30)
            mode = ""
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


# --- An integration's webhook (the API channel) ---------------------------------------------


class FakeIntegration(FakeProvider):
    """An app that takes agents' replies on its webhook: it checks our signature as the
    README tells integrators to, and answers with its own id for the message."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret
        self.seen: dict[str, str] = {}  # our message id -> theirs: a second copy is dropped

    def signed(self, request: Recorded) -> bool:
        fields = dict(
            part.split("=", 1)
            for part in request.headers.get("x-threadline-signature", "").split(",")
            if "=" in part
        )
        signed = f"{fields.get('t', '')}.".encode() + request.body
        expected = hmac.new(self.secret.encode(), signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(fields.get("v1", ""), expected)

    def answer(self, request: Recorded) -> Answer:
        if not self.signed(request):
            return Answer(401, b"bad signature", "text/plain")
        ours = request.json()["id"]
        theirs = self.seen.setdefault(ours, f"app-{len(self.seen) + 1}")
        return Answer.json(200, {"id": theirs})

    def failure(self, mode: str) -> Answer:
        if mode in ("404", "429"):
            return Answer(int(mode), b"No such user" if mode == "404" else b"", "text/plain")
        return super().failure(mode)


class FakeReceiver(FakeIntegration):
    """An integrator's endpoint for outgoing webhooks: it checks our signature as the README
    tells them to (the API inbox's scheme), keeps each event once by its id however often it
    comes, and answers 200. `fail("400")` refuses an event for good."""

    def __init__(self, secret: str = ""):
        super().__init__(secret)
        self.events: dict[str, dict] = {}  # event id -> the event, first copy kept

    def answer(self, request: Recorded) -> Answer:
        if not self.signed(request):
            return Answer(401, b"bad signature", "text/plain")
        event = request.json()
        self.events.setdefault(event["id"], event)
        return Answer(200, b"ok", "text/plain")

    def failure(self, mode: str) -> Answer:
        if mode in ("400", "410"):
            return Answer(int(mode), b"No such hook", "text/plain")
        return super().failure(mode)

    def types(self) -> list[str]:
        return [event["type"] for event in self.events.values()]


# --- Twilio -----------------------------------------------------------------------------------


class FakeTwilio(FakeProvider):
    """Twilio's Messages API (2010-04-01) with HTTP basic auth, its error JSON, media behind
    the same auth, and the `X-Twilio-Signature` it puts on webhooks."""

    def __init__(self, account_sid="AC" + "1" * 32, auth_token="twilio-auth-token"):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.next_sids: list[str] = []  # sids to hand out before random ones
        self.sent: list[dict] = []  # the messages made, oldest first, as the API lists them
        super().__init__()

    @property
    def messages_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def _authorized(self, request: Recorded) -> bool:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    media_authorized = _authorized

    def answer(self, request: Recorded) -> Answer:
        if request.path != self.messages_path or request.method not in ("POST", "GET"):
            return self._error(404, 20404, "The requested resource was not found")
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        if request.method == "GET":  # the list, newest first, filtered as the API does
            asked = {key.lower(): value for key, value in request.query.items()}
            wanted = {key: asked[key] for key in ("to", "from") if key in asked}
            listed = [m for m in reversed(self.sent) if all(m[k] == v for k, v in wanted.items())]
            size = int(request.query.get("PageSize", 50))
            return Answer.json(200, {"messages": listed[:size], "page": 0, "page_size": size})
        form = request.form()
        sid = self.next_sids.pop(0) if self.next_sids else "SM" + secrets.token_hex(16)
        made = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": form["To"][0],
            "from": form.get("From", [""])[0],
            "messaging_service_sid": form.get("MessagingServiceSid", [None])[0],
            "body": form.get("Body", [""])[0],
            "status": "queued",
            "num_media": str(len(form.get("MediaUrl", []))),
            "error_code": None,
            "date_created": formatdate(usegmt=True),
        }
        self.sent.append(made)
        return Answer.json(201, made)

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

    def sign(self, url: str, params: dict, key: str = "", digest=hashlib.sha1) -> str:
        """Twilio's scheme: the URL, then each POST field name and value in name order,
        HMAC-SHA1 with the auth token (or another key and digest), base64."""
        data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
        mac = hmac.new((key or self.auth_token).encode(), data.encode(), digest).digest()
        return base64.b64encode(mac).decode()

    def post_webhook(
        self, client, path: str, params: dict, *, signed_url=None, shared_key="", **headers
    ):
        """Call our webhook with form fields, signed for the URL Twilio believes it called.
        With `shared_key`, as Twilio signs where a webhook rule names a SharedKey: HMAC-SHA256
        with that key's secret, and a header that says so."""
        url = signed_url or f"http://testserver{path}"
        if shared_key:
            headers["HTTP_X_TWILIO_WEBHOOKS_SIGNATURE_SETTINGS"] = (
                "key=webhooks_sharedkey_0123,algorithm=HMAC_SHA256"
            )
        return client.post(
            path,
            data=urlencode(params),
            content_type="application/x-www-form-urlencoded",
            HTTP_X_TWILIO_SIGNATURE=self.sign(
                url, params, shared_key, hashlib.sha256 if shared_key else hashlib.sha1
            ),
            **headers,
        )


# --- Meta Graph API (Messenger and WhatsApp) ----------------------------------------------------

META_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "meta"


def meta_payload(name: str, **values: str) -> bytes:
    """A webhook body from tests/fixtures/meta, with its `{{key}}` slots filled in."""
    raw = (META_FIXTURES / name).read_bytes()
    for key, value in values.items():
        raw = raw.replace(f"{{{{{key}}}}}".encode(), value.encode())
    return raw


def multipart_fields(request: Recorded) -> dict[str, tuple[str, str, bytes]]:
    """name -> (filename, content type, content) of a multipart/form-data body."""
    from email import message_from_bytes
    from email.policy import HTTP

    head = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
    message = message_from_bytes(head + request.body, policy=HTTP)
    if not message.is_multipart():
        raise ValueError("not a multipart body")
    return {
        part.get_param("name", header="content-disposition"): (
            part.get_filename() or "",
            part.get_content_type() if part.get("content-type") else "",
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


class FakeGraph(FakeProvider):
    """Meta's Graph API as Messenger's Send API and WhatsApp's Cloud API speak it: sends
    answered with generated mids and wamids, user profiles, WhatsApp media ids that resolve
    to a download URL on this server (behind the same Bearer token), multipart uploads, and
    Graph's error JSON. `sent` keeps the sends it accepted, with the id it gave each."""

    version = "v21.0"
    MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")

    def __init__(
        self,
        *,
        page_id="1122334455",
        phone_number_id="106540352242922",
        token="graph-page-token",
        app_secret="meta-app-secret",
    ):
        self.page_id, self.phone_number_id = page_id, phone_number_id
        self.token, self.app_secret = token, app_secret
        self.profiles: dict[str, dict] = {}  # psid -> {"first_name": ..., "last_name": ...}
        self.whatsapp_media: dict[str, str] = {}  # media id -> mime type (served under /wa/)
        self.uploads: dict[str, tuple[str, str, bytes]] = {}  # media id -> multipart file
        self.sent: list[tuple[Recorded, str]] = []
        self.next_wamids: list[str] = []  # WhatsApp message ids to hand out before random ones
        self._local = threading.local()
        super().__init__()

    @property
    def base_url(self) -> str:
        return f"{self.url}/{self.version}"

    # --- What the tests use -----------------------------------------------------------------

    def sign(self, body: bytes) -> str:
        """Meta's X-Hub-Signature-256: hex HMAC-SHA256 of the raw body with the app secret."""
        return "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()

    def post_webhook(self, client, path: str, body, **headers):
        """Call our webhook as Meta does: the JSON body, signed."""
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        return client.post(
            path,
            data=body,
            content_type="application/json",
            **{"HTTP_X_HUB_SIGNATURE_256": self.sign(body), **headers},
        )

    def add_whatsapp_media(self, media_id: str, content: bytes, content_type: str) -> None:
        self.whatsapp_media[media_id] = content_type
        self.media[f"/wa/{media_id}"] = (content, content_type)

    def payloads(self) -> list[dict]:
        """What each accepted send asked for: the JSON body, or for a multipart send its
        fields (JSON ones decoded) with the file as (filename, content type, bytes)."""
        return [self.payload(request) for request, _ in self.sent]

    @staticmethod
    def payload(request: Recorded) -> dict:
        if request.headers.get("content-type", "").startswith("multipart/"):
            fields = {}
            for name, (filename, content_type, content) in multipart_fields(request).items():
                if filename:
                    fields[name] = (filename, content_type, content)
                else:
                    text = content.decode()
                    fields[name] = json.loads(text) if text[:1] in "{[" else text
            return fields
        return request.json()

    # --- The API ----------------------------------------------------------------------------

    def _dispatch(self, request: Recorded) -> Answer | None:
        self._local.request = request  # failure() answers in the shape of the API called
        return super()._dispatch(request)

    def _authorized(self, request: Recorded) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.token}" or (
            request.query.get("access_token") == self.token
        )

    def media_authorized(self, request: Recorded) -> bool:
        # WhatsApp media needs the token; Messenger's CDN links are capabilities on their own.
        return self._authorized(request) if request.path.startswith("/wa/") else True

    def _node_edge(self, request: Recorded) -> tuple[str, str]:
        parts = request.path.strip("/").split("/")
        if parts[0] != self.version:
            return "", ""
        return (parts[1] if len(parts) > 1 else ""), (parts[2] if len(parts) > 2 else "")

    def answer(self, request: Recorded) -> Answer:
        if not self._authorized(request):
            return self._error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        node, edge = self._node_edge(request)
        if request.method == "POST" and edge == "messages" and node == self.phone_number_id:
            return self._whatsapp_send(request)
        if request.method == "POST" and edge == "messages" and node in ("me", self.page_id):
            return self._messenger_send(request)
        if request.method == "POST" and edge == "media" and node == self.phone_number_id:
            return self._upload(request)
        if request.method == "GET" and not edge and node in self.whatsapp_media:
            return Answer.json(
                200,
                {
                    "messaging_product": "whatsapp",
                    "url": f"{self.url}/wa/{node}",
                    "mime_type": self.whatsapp_media[node],
                    "file_size": len(self.media[f"/wa/{node}"][0]),
                    "id": node,
                },
            )
        if request.method == "GET" and not edge and node in self.profiles:
            return Answer.json(200, {**self.profiles[node], "id": node})
        return self._error(
            400, 100, f"Unsupported {request.method} request to {request.path}", subcode=33
        )

    def _messenger_send(self, request: Recorded) -> Answer:
        payload = self.payload(request)
        recipient = (payload.get("recipient") or {}).get("id")
        message = payload.get("message") or {}
        if not recipient or not (message.get("text") or message.get("attachment")):
            return self._error(400, 100, "(#100) The parameter recipient is required")
        if payload.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            return self._error(400, 100, "(#100) Param messaging_type must be one of ...")
        if payload.get("messaging_type") == "MESSAGE_TAG" and not payload.get("tag"):
            return self._error(400, 100, "(#100) Tag is required for MESSAGE_TAG")
        if message.get("attachment") and "filedata" not in payload:
            return self._error(400, 100, "(#100) Upload attachment failure.")
        mid = "m_" + secrets.token_urlsafe(24)
        self.sent.append((request, mid))
        return Answer.json(200, {"recipient_id": recipient, "message_id": mid})

    def _whatsapp_send(self, request: Recorded) -> Answer:
        payload = request.json()
        kind = payload.get("type")
        if payload.get("messaging_product") != "whatsapp" or not payload.get("to"):
            return self._error(400, 100, "(#100) The parameter messaging_product is required.")
        if kind in self.MEDIA_TYPES and (payload.get(kind) or {}).get("id") not in self.uploads:
            return self._error(400, 131053, "Media upload error")
        if kind == "template" and not (payload.get("template") or {}).get("language"):
            return self._error(400, 100, "(#100) Param template['language'] is required")
        wamid = (
            self.next_wamids.pop(0)
            if self.next_wamids
            else "wamid." + base64.b64encode(secrets.token_bytes(30)).decode()
        )
        self.sent.append((request, wamid))
        return Answer.json(
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": payload["to"], "wa_id": payload["to"]}],
                "messages": [{"id": wamid}],
            },
        )

    def _upload(self, request: Recorded) -> Answer:
        fields = multipart_fields(request)
        if fields.get("messaging_product", ("", "", b""))[2] != b"whatsapp" or "file" not in fields:
            return self._error(400, 100, "(#100) The parameter messaging_product is required.")
        media_id = str(secrets.randbelow(10**15))
        self.uploads[media_id] = fields["file"]
        return Answer.json(200, {"id": media_id})

    def failure(self, mode: str) -> Answer:
        request = getattr(self._local, "request", None)
        whatsapp = request is not None and self._node_edge(request)[0] == self.phone_number_id
        if mode == "500":
            if whatsapp:
                return self._error(
                    500, 131000, "Something went wrong", details="Something went wrong"
                )
            return self._error(500, 2, "An unexpected error has occurred.", transient=True)
        if mode == "429":
            return self._error(429, 4, "(#4) Application request limit reached", transient=True)
        if mode == "rate_limit":
            if whatsapp:
                return self._error(
                    400,
                    130429,
                    "(#130429) Rate limit hit",
                    details="Cloud API message throughput has been reached.",
                )
            return self._error(400, 613, "(#613) Calls to this api have exceeded the rate limit.")
        if mode == "temporary":  # the Send API's own "try again later"
            return self._error(
                400, 1200, "(#1200) Temporary send message failure. Please try again later."
            )
        if mode == "invalid_recipient":
            if whatsapp:
                return self._error(
                    400,
                    131026,
                    "(#131026) Message Undeliverable.",
                    details="Message Undeliverable.",
                )
            return self._error(400, 100, "(#100) No matching user found", subcode=2018001)
        if mode == "outside_window":
            if whatsapp:
                return self._error(
                    400,
                    131047,
                    "(#131047) Re-engagement message",
                    details="Message failed to send because more than 24 hours have passed "
                    "since the customer last replied to this number.",
                )
            return self._error(
                400, 10, "(#10) This message is sent outside of allowed window.", subcode=2018278
            )
        raise ValueError(f"unknown failure mode {mode!r}")

    @staticmethod
    def _error(status, code, message, *, subcode=None, details=None, transient=None) -> Answer:
        error = {"message": message, "type": "OAuthException", "code": code}
        if subcode:
            error["error_subcode"] = subcode
        if transient is not None:
            error["is_transient"] = transient
        if details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        error["fbtrace_id"] = "A" + secrets.token_hex(10)
        return Answer.json(status, {"error": error})
