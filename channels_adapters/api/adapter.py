from channels_adapters.base import (
    Adapter,
    Capabilities,
    InvalidPayload,
    bearer_secret_matches,
    json_object,
)
from conversations.models import Channel
from conversations.services import InboundMessage


class ApiAdapter(Adapter):
    """The generic API channel: integrators post customer messages as JSON.

    Request: `POST /channels/api/<inbox id>/messages` with `Authorization: Bearer <inbox
    secret>` and `{"id": "...", "from": "...", "name": "...", "text": "...", "subject": "..."}`.
    Replies reach integrators through outgoing webhooks, which are not built yet, so agents
    cannot answer on this channel until then (reply_send says so).
    """

    kind = Channel.API
    capabilities = Capabilities(can_send=False, subject=True, max_length=65536)

    def verify(self, inbox, *, body, headers, url):
        return bearer_secret_matches(inbox, headers.get("authorization", ""))

    @staticmethod
    def decode(body: bytes) -> dict:
        """The JSON object of a request, or InvalidPayload saying what is wrong with it."""
        data = json_object(body)
        for key in ("id", "from", "text"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise InvalidPayload(f"Field {key!r} is required and must be a string.")
        for key in ("name", "subject"):
            if not isinstance(data.get(key, ""), str):
                raise InvalidPayload(f"Field {key!r} must be a string.")
        for key in ("id", "from"):  # they name things: not cleaned, refused
            if "\x00" in data[key]:
                raise InvalidPayload(f"Field {key!r} cannot contain NUL characters.")
        if len(data["id"]) > 255:
            raise InvalidPayload("Field 'id' has at most 255 characters.")
        if len(data["from"]) > 300:  # stored after this inbox's id (Identity.address)
            raise InvalidPayload("Field 'from' has at most 300 characters.")
        return data

    def parse_inbound(self, event):
        data = self.decode(event.raw())
        return [
            InboundMessage(
                channel=Channel.API,
                address=data["from"],
                name=data.get("name", ""),
                subject=data.get("subject", ""),
                text=data["text"],
                provider_id=data["id"],
            )
        ]
