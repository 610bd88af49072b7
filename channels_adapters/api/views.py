from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from channels_adapters.api.adapter import ApiAdapter
from channels_adapters.base import InvalidPayload
from channels_adapters.delivery import inbound_event_store
from conversations.models import Channel, Inbox

MAX_BODY = 1024 * 1024


@csrf_exempt
@require_POST
def inbound(request, inbox_id: int):
    """Accept one customer message for an API inbox: check the secret, validate, store the raw
    body, answer 202. Processing happens in a task; a replayed id changes nothing."""
    inbox = Inbox.objects.filter(pk=inbox_id, kind=Channel.API).first()
    if inbox is None:
        return JsonResponse({"error": f"No API inbox has the id {inbox_id}."}, status=404)
    adapter = ApiAdapter()
    headers = {"authorization": request.headers.get("Authorization", "")}
    if not adapter.verify(inbox, body=b"", headers=headers, url=request.build_absolute_uri()):
        return JsonResponse({"error": "Missing or wrong bearer token."}, status=403)
    if not inbox.is_active:
        # Said plainly, so whoever integrates asks an admin rather than retrying.
        error = "This inbox is switched off; an admin can turn it on."
        return JsonResponse({"error": error}, status=403)
    # Said before reading it: past Django's own limit, reading is an HTML error page.
    if int(request.headers.get("Content-Length") or 0) > MAX_BODY or len(request.body) > MAX_BODY:
        return JsonResponse({"error": "Body larger than 1 MiB."}, status=413)
    try:
        data = adapter.decode(request.body)
    except InvalidPayload as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    event, created = inbound_event_store(inbox=inbox, dedupe_key=data["id"], payload=request.body)
    return JsonResponse({"event": event.pk, "duplicate": not created}, status=202)
