import logging

from django.conf import settings
from django.core import signing
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from channels_adapters.base import InvalidPayload
from channels_adapters.delivery import inbound_event_store
from channels_adapters.registry import adapter_for
from channels_adapters.tasks import inbound_handoff
from conversations.models import Attachment, Channel, Inbox
from conversations.views import attachment_as_download
from routing.models import ShortCache

log = logging.getLogger(__name__)

# How long a provider may take to fetch an attachment we send as a link (Twilio's MediaUrl).
MEDIA_LINK_SECONDS = 24 * 3600
# Channels whose provider calls a signed webhook (email and the API have their own views).
WEBHOOK_CHANNELS = {Channel.SMS, Channel.MESSENGER, Channel.WHATSAPP}
# Reading a webhook's inbox costs a web process as much CPU as storing the event, so each process
# keeps the inboxes it read for 10 s. A change saved anywhere applies within that time, and at
# once in the process that saved it.
_inboxes = ShortCache(10, Inbox)


def public_url(request) -> str:
    """The URL the provider called, as it knows it: behind a proxy, PUBLIC_URL says the
    scheme and host, since the request we see may have been rewritten on the way."""
    if settings.PUBLIC_URL:
        return settings.PUBLIC_URL + request.get_full_path()
    return request.build_absolute_uri()


def _refuse(status: int, reason: str) -> HttpResponse:
    return HttpResponse(reason, status=status, content_type="text/plain; charset=utf-8")


@csrf_exempt
@require_http_methods(["GET", "POST"])
def webhook(request, kind: str, inbox_id: int):
    """A provider's webhook for one inbox: verify the signature on the raw bytes, check the
    body is readable, store it once, answer at once. A task does the rest."""
    adapter = adapter_for(kind)
    if kind not in WEBHOOK_CHANNELS or adapter is None:
        raise Http404("No such channel.")
    inbox = _webhook_inbox(kind, inbox_id)
    if request.method == "GET":
        return adapter.handshake(inbox, request.GET)
    if int(request.headers.get("Content-Length") or 0) > adapter.webhook_max_bytes:
        return _refuse(413, "Body too large.")
    body = request.body
    if not adapter.verify(inbox, body=body, headers=request.headers, url=public_url(request)):
        log.warning("%s webhook for inbox %s: missing or bad signature", kind, inbox.pk)
        return _refuse(403, "Missing or bad signature.")
    try:
        key = adapter.webhook_key(inbox, body, request.content_type)
    except InvalidPayload as exc:
        log.warning("%s webhook for inbox %s: unreadable body: %s", kind, inbox.pk, exc)
        return _refuse(400, f"Unreadable body: {exc}")
    event, created = inbound_event_store(inbox=inbox, dedupe_key=key, payload=body, enqueue=False)
    response = adapter.webhook_answer()
    if created:
        # Stored, so the answer can go; the task is enqueued once it has. Should this process
        # die in between, the sweep finds the pending event.
        _after_response(response, lambda: inbound_handoff.add(event.pk))
    return response


def _webhook_inbox(kind: str, inbox_id: int) -> Inbox:
    return _inboxes.get(
        (kind, inbox_id),
        lambda: get_object_or_404(Inbox, pk=inbox_id, kind=kind, is_active=True),
    )


def _after_response(response: HttpResponse, action) -> None:
    """Run `action` when the server closes `response`, after the client has it."""
    close = response.close

    def close_then_act():
        try:
            close()
        finally:
            action()

    response.close = close_then_act


def public_attachment_url(attachment: Attachment) -> str:
    """A signed, expiring link to one outbound attachment, for a provider that fetches media
    itself (Twilio). Needs PUBLIC_URL: the provider must be able to reach us."""
    from channels_adapters.base import PermanentError

    if not settings.PUBLIC_URL:
        raise PermanentError("Attachments need PUBLIC_URL set, so the provider can fetch them.")
    token = signing.dumps(attachment.pk, salt="provider-media")
    return settings.PUBLIC_URL + reverse("provider-media", args=[token])


def provider_media(request, token: str):
    """Serve an attachment to the provider holding a link we signed; anyone else gets 404."""
    try:
        pk = signing.loads(token, salt="provider-media", max_age=MEDIA_LINK_SECONDS)
    except signing.BadSignature as exc:
        raise Http404("No such media.") from exc
    attachment = get_object_or_404(Attachment, pk=pk, message__direction="outbound")
    return attachment_as_download(attachment)
