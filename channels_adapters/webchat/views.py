"""The widget's HTTP side: its script, a visitor's session, uploads, media and a demo page.

These answer pages on other sites (CORS), so they use no cookies: the visitor's signed token
travels in the body. Everything live happens over the socket (conversations.consumers).
"""

from __future__ import annotations

import json
from functools import wraps

from django.conf import settings
from django.contrib.staticfiles import finders
from django.core import signing
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import translation
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from channels_adapters.webchat import chat
from conversations.models import Attachment, Channel, Inbox
from conversations.services import (
    IMAGE_TYPES,
    UPLOAD_MAX_BYTES,
    UPLOAD_TYPES,
    InboundAttachment,
    sniffed_type,
    without_nul,
    without_reordering,
)
from conversations.views import attachment_as_download

SESSION_BODY_MAX = 16 * 1024
UPLOADS_PER_MINUTE = 10  # per visitor: a chat's screenshots, not a disk filled in a loop


def _cors(view):
    """Answer pages on the inbox's allowed origins; refuse others with 403, readable by the
    page (the widget says why in the browser's console, for whoever embeds it on a site not
    yet allowed). No credentials: the token is in the body, so no other site's cookies matter
    here."""

    @csrf_exempt
    @wraps(view)
    def wrapped(request, key, *args, **kwargs):
        inbox = chat.widget_inbox(key)
        if inbox is None:
            return JsonResponse({"error": "No such chat widget."}, status=404)
        origin = request.headers.get("Origin", "")
        if request.method == "OPTIONS":
            response = HttpResponse(status=204)  # the request itself is refused, saying why
        elif not chat.origin_allowed(inbox, origin, request.get_host()):
            error = (
                f"This site ({origin or 'no origin'}) may not use this chat widget: an admin "
                "adds it to the inbox's allowed websites."
            )
            response = JsonResponse({"error": error}, status=403)
        elif request.method != "POST":
            response = JsonResponse({"error": "Use POST."}, status=405)
        else:
            response = view(request, inbox, *args, **kwargs)
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
        response["Access-Control-Allow-Headers"] = "Content-Type"
        response["Access-Control-Max-Age"] = "600"
        response["Vary"] = "Origin"
        return response

    return wrapped


def _strings() -> dict:
    """Every word the widget shows, in the visitor's language (the server translates)."""
    return {
        "title": _("Chat with us"),
        "open": _("Open the chat"),
        "close": _("Close the chat"),
        "placeholder": _("Write a message…"),
        "send": _("Send"),
        "attach": _("Attach a file"),
        "online": _("Online — we reply in minutes"),
        "offline": _("We reply by email, usually within %(time)s"),
        "back_at": _("We are back %(when)s"),
        "back_today": _("We are back today at %(time)s"),
        "back_tomorrow": _("We are back tomorrow at %(time)s"),
        "offline_closed": _("We reply by email, usually within %(time)s of opening"),
        "queue": _("You are number %(position)s in line"),
        "queue_wait": _("You are number %(position)s in line, about %(minutes)s min"),
        "queue_wait_hours": _("You are number %(position)s in line, about %(hours)s h"),
        "joined": _("%(name)s joined the chat"),
        "ask_email": _("Leave your email so our answer reaches you if you go:"),
        "ask_email_transcript": _("Where should we send the transcript?"),
        "name": _("Your name"),
        "email": _("Your email"),
        "name_optional": _("Your name (optional)"),
        "email_optional": _("Your email (optional)"),
        "start": _("Start the chat"),
        "save": _("Save"),
        "email_saved": _("We will email you at %(email)s if you have left."),
        "email_pending": _(
            "We will email you at %(email)s once we have checked it is yours. If it chatted "
            "with us before, a link to go on with that chat is on its way there."
        ),
        "typing": _("%(name)s is typing…"),
        "seen": _("Seen"),
        "sending": _("Sending…"),
        "failed": _("Not sent. Tap to retry."),
        "file_lost": _("Not sent: the page closed before it went. Please attach it again."),
        "end": _("End the chat"),
        "ended": _("This chat has ended."),
        "new": _("Start a new conversation"),
        "rate": _("How did we do?"),
        "comment": _("Anything to add? (optional)"),
        "rated": _("Thank you for your rating."),
        "transcript": _("Email me the transcript"),
        "transcript_sent": _("The transcript is on its way."),
        "went_async": _("No rush: we will answer here and by email."),
        "reconnecting": _("Reconnecting…"),
        "via_email": _("by email"),
        "you": _("You"),
        "required": _("This field is required."),
        "file_type": _("Only images (PNG, JPEG, GIF, WebP), PDF and text files can be sent."),
        "file_size": _("Files are limited to %(mb)s MB.") % {"mb": UPLOAD_MAX_BYTES >> 20},
        "too_long": _("Messages are limited to %(n)s characters.") % {"n": chat.TEXT_MAX_CHARS},
        "preview_notice": _("Our team sees what you type before you send it."),
    }


@_cors
def session(request, inbox: Inbox):
    """Start or resume a visitor: the token they hold (if any) and, on sites that know their
    user, the user id with its HMAC. Answers the token to keep and what the widget shows."""
    if len(request.body) > SESSION_BODY_MAX:
        return JsonResponse({"error": "Body too large."}, status=413)
    try:
        data = without_nul(json.loads(request.body or b"{}"))
    except ValueError:
        return JsonResponse({"error": "The body must be JSON."}, status=400)
    if not isinstance(data, dict):
        return JsonResponse({"error": "The body must be a JSON object."}, status=400)
    token = str(data.get("token") or "")
    if chat.visitor_from_token(inbox, token) is None and not chat.rate_allowed(
        "visitors", request.META.get("REMOTE_ADDR", "")
    ):
        return JsonResponse(
            {"error": "Too many new chats from your address; wait a minute."}, status=429
        )
    user = data.get("user") if isinstance(data.get("user"), dict) else {}
    language = str(data.get("language") or "")[:35]
    with translation.override(chat.supported_language(language)):
        try:
            visitor = chat.visitor_session(
                inbox=inbox,
                token=token,
                user_id=str(user.get("id") or ""),
                user_hash_given=str(user.get("hash") or ""),
                name=without_reordering(str(user.get("name") or "")),
                language=language,
                zone=str(data.get("timezone") or "")[:64],
                page_url=str(data.get("page") or "").partition("#")[0],
                user_agent=request.headers.get("User-Agent", ""),
                resume=str(data.get("resume") or ""),
            )
        except ValidationError as exc:
            return JsonResponse({"error": exc.messages[0]}, status=403)
        config = chat.widget_settings(inbox)
        customer = visitor.identity.customer
        return JsonResponse(
            {
                "token": chat.visitor_token(visitor),
                "socket": f"/ws/widget/{inbox.widget_key}/",
                "upload": reverse("webchat:upload", args=[inbox.widget_key]),
                "visitor": {
                    "name": customer.name,
                    "email": visitor.email or getattr(chat.visitor_email(visitor), "address", ""),
                    "email_pending": chat.email_pending(visitor),
                    "identified": visitor.identified,
                    # Whose this browser's chat is now, opaque: the widget sends what it kept
                    # unsent only while it is the same person's (not after a sign-out).
                    "owner": salted_hmac("threadline.webchat.owner", customer.pk).hexdigest()[:20],
                },
                "settings": {
                    "title": inbox.name,
                    "greeting": chat.greeting_for(config, language or customer.language)
                    or _("Hi! How can we help?"),
                    "color": config["color"],
                    "logo_url": config["logo_url"],
                    "prechat_name": config["prechat_name"],
                    "prechat_email": config["prechat_email"],
                    "upload_types": list(UPLOAD_TYPES),
                    "upload_max_bytes": UPLOAD_MAX_BYTES,
                    # The unsent draft leaves the browser only where agents may read it.
                    "typing_preview": config["typing_preview"],
                },
                "availability": chat.availability(inbox),
                "strings": _strings(),
                "language": translation.get_language(),  # the strings', for dates in them
            }
        )


def _strings_for(visitor) -> dict:
    with translation.override(chat.supported_language(visitor.identity.customer.language)):
        return _strings()


@_cors
def upload(request, inbox: Inbox):
    """A file from the visitor (multipart: token, client_id, file, optional text)."""
    visitor = chat.visitor_from_token(inbox, request.POST.get("token", ""))
    if visitor is None:
        return JsonResponse({"error": "Missing or invalid visitor token."}, status=401)
    if not chat.rate_allowed("files", visitor.key, UPLOADS_PER_MINUTE):
        return JsonResponse({"error": "Too many files at once; wait a minute."}, status=429)
    strings = _strings_for(visitor)
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "No file."}, status=400)
    if upload.size > UPLOAD_MAX_BYTES:
        return JsonResponse({"error": strings["file_size"]}, status=413)
    content_type = sniffed_type(upload)
    if content_type is None:
        return JsonResponse({"error": strings["file_type"]}, status=415)
    try:
        received = chat.visitor_message(
            visitor,
            text=request.POST.get("text", ""),
            client_id=request.POST.get("client_id", ""),
            attachments=(
                InboundAttachment(
                    filename=(upload.name or "file")[:255],
                    content_type=content_type,
                    content=upload,
                ),
            ),
        )
    except ValidationError as exc:
        return JsonResponse({"error": exc.messages[0]}, status=400)
    return JsonResponse({"message": received.message.pk}, status=201 if received.created else 200)


def media(request, token: str):
    """A file of a visitor's conversation, for the widget holding a link we signed."""
    try:
        pk = signing.loads(token, salt=chat.MEDIA_SALT, max_age=chat.MEDIA_LINK_SECONDS)
    except signing.BadSignature as exc:
        raise Http404("No such file.") from exc
    attachment = get_object_or_404(
        Attachment.objects.exclude(file=""), pk=pk, message__direction__in=("inbound", "outbound")
    )
    response = attachment_as_download(attachment)
    if attachment.content_type in IMAGE_TYPES:
        response["Content-Disposition"] = "inline"  # a raster image may show in the chat
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


def script(request):
    """widget.js, under the short name the snippet uses."""
    path = finders.find("widget/widget.js")
    # The charset, or a shop's page in windows-1252 reads our "·" as "Â·".
    response = FileResponse(open(path, "rb"), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=300"
    response["Access-Control-Allow-Origin"] = "*"
    return response


def snippet(inbox: Inbox, base: str = "") -> str:
    """What an admin pastes before </body> on their site."""
    base = base or settings.PUBLIC_URL
    return f'<script src="{base}/widget.js" data-inbox="{inbox.widget_key}" async></script>'


def demo(request):
    """A page that embeds the first web-chat inbox's widget, as a customer's site would."""
    inbox = Inbox.objects.filter(kind=Channel.WEBCHAT, is_active=True).order_by("pk").first()
    if inbox is None:
        raise Http404("There is no web-chat inbox; add one in the admin.")
    return render(request, "widget/demo.html", {"inbox": inbox})


def page(request, key: str):
    """The inbox's chat on a page of our own, opened: where our mail's "continue in the chat"
    links lead (chat.resume_link), on whatever device the customer reads it."""
    inbox = chat.widget_inbox(key)
    if inbox is None:
        raise Http404("No such chat.")
    return render(request, "widget/page.html", {"inbox": inbox})
