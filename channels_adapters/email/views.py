from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from channels_adapters.base import bearer_secret_matches
from channels_adapters.email.ingest import MAX_EMAIL_BYTES, ingest
from channels_adapters.email.parsing import NotAnEmail
from conversations.models import Channel, Inbox


@csrf_exempt
@require_POST
def inbound_mime(request, inbox_id: int):
    """A raw MIME message for an email inbox, from a mail service's webhook or a relay.
    Authorised by the inbox secret as a bearer token; 202 once stored."""
    inbox = Inbox.objects.filter(pk=inbox_id, kind=Channel.EMAIL).first()
    if inbox is None:  # in JSON, as every other answer here
        return JsonResponse({"error": f"No email inbox has the id {inbox_id}."}, status=404)
    if not bearer_secret_matches(inbox, request.headers.get("Authorization", "")):
        return JsonResponse({"error": "Missing or wrong bearer token."}, status=403)
    if not inbox.is_active:  # said to whoever holds its secret, so they ask an admin
        error = "This inbox is switched off; an admin can turn it on."
        return JsonResponse({"error": error}, status=403)
    if int(request.headers.get("Content-Length") or 0) > MAX_EMAIL_BYTES:
        return JsonResponse({"error": "Message larger than the limit."}, status=413)
    raw = request.read(MAX_EMAIL_BYTES + 1)  # not request.body: mail is larger than its limit
    if len(raw) > MAX_EMAIL_BYTES:
        return JsonResponse({"error": "Message larger than the limit."}, status=413)
    try:
        result = ingest(inbox, raw, process_now=False)
    except NotAnEmail as exc:
        return JsonResponse({"error": f"Not an email: {exc}"}, status=400)
    return JsonResponse({"event": result.event.pk, "duplicate": result.duplicate}, status=202)
