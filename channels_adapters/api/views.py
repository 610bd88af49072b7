import hashlib

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from channels_adapters.api.adapter import ApiAdapter
from channels_adapters.base import InvalidPayload
from channels_adapters.delivery import inbound_event_store
from conversations.models import Channel, Inbox, Message

MAX_BODY = 1024 * 1024


@csrf_exempt
@require_POST
def inbound(request, inbox_id: int):
    """Accept one customer message for an API inbox: check the secret, validate, store the raw
    body, answer 202. Processing happens in a task; a replayed id changes nothing."""
    accepted = _accepted(request, inbox_id, ApiAdapter.decode)
    if isinstance(accepted, JsonResponse):
        return accepted
    inbox, data = accepted
    event, created = inbound_event_store(inbox=inbox, dedupe_key=data["id"], payload=request.body)
    return JsonResponse({"event": event.pk, "duplicate": not created}, status=202)


@csrf_exempt
@require_POST
def status(request, inbox_id: int):
    """Take an integration's word on one of the inbox's replies (delivered, read, failed):
    stored and applied like a provider's status callback, so a replay changes nothing."""
    accepted = _accepted(request, inbox_id, ApiAdapter.decode_status)
    if isinstance(accepted, JsonResponse):
        return accepted
    inbox, data = accepted
    ours = Message.objects.filter(
        pk=int(data["id"]), inbox=inbox, direction=Message.Direction.OUTBOUND
    )
    if not ours.exists():
        return _refused(404, f"This inbox sent no reply with the id {data['id']}.")
    # Its own key space: a message's id is whatever the integration chose.
    said = f"{data['id']} {data['status']}".encode()
    key = "status:" + hashlib.sha256(said).hexdigest()
    event, created = inbound_event_store(
        inbox=inbox, dedupe_key=key, payload=request.body, headers={"type": "status"}
    )
    return JsonResponse({"event": event.pk, "duplicate": not created}, status=202)


def _accepted(request, inbox_id: int, decode) -> tuple[Inbox, dict] | JsonResponse:
    """The inbox and the decoded body of a request it takes, or the answer saying why not."""
    inbox = Inbox.objects.filter(pk=inbox_id, kind=Channel.API).first()
    if inbox is None:
        return _refused(404, f"No API inbox has the id {inbox_id}.")
    adapter = ApiAdapter()
    headers = {"authorization": request.headers.get("Authorization", "")}
    if not adapter.verify(inbox, body=b"", headers=headers, url=request.build_absolute_uri()):
        return _refused(403, "Missing or wrong bearer token.")
    if not inbox.is_active:
        # Said plainly, so whoever integrates asks an admin rather than retrying.
        return _refused(403, "This inbox is switched off; an admin can turn it on.")
    # Said before reading it: past Django's own limit, reading is an HTML error page.
    if int(request.headers.get("Content-Length") or 0) > MAX_BODY or len(request.body) > MAX_BODY:
        return _refused(413, "Body larger than 1 MiB.")
    try:
        return inbox, decode(request.body)
    except InvalidPayload as exc:
        return _refused(400, str(exc))


def _refused(status: int, error: str) -> JsonResponse:
    return JsonResponse({"error": error}, status=status)
