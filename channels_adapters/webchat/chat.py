"""The web chat from the visitor's side: who they are, what they may read, what they may do.

The widget's HTTP endpoints and its WebSocket consumer call these; every change still goes
through `conversations.services`. A visitor reads only their own customer's conversations, as
plain text, never notes, internal events or other people's tokens.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, prefetch_related_objects
from django.db.models.functions import Greatest
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from conversations.models import (
    Attachment,
    Channel,
    Conversation,
    ConversationEvent,
    Identity,
    Inbox,
    Message,
    Visitor,
    new_public_key,
)
from conversations.realtime import publish_conversation_event, publish_customer_event
from conversations.services import (
    IMAGE_TYPES,
    AddressTaken,
    InboundAttachment,
    InboundMessage,
    Received,
    _event,
    conversation_set_status,
    customer_merge,
    identity_add,
    identity_get_or_create,
    in_language,
    language_normalize,
    without_reordering,
)
from helpdesk.middleware import zone_names
from routing.models import ShortCache

VISITOR_SALT = "threadline.webchat.visitor"
# How long a signed-in user's token opens their history: a copy of it must not do so for ever.
IDENTIFIED_TOKEN_AGE = timedelta(hours=12)
# A "continue in the chat" link in our mail brings the visitor back on any device, this long.
RESUME_SALT = "threadline.webchat.resume"
RESUME_AGE = timedelta(days=30)
MEDIA_SALT = "threadline.webchat.media"
MEDIA_LINK_SECONDS = 24 * 3600
TEXT_MAX_CHARS = 5000
# The conversation the widget shows takes new messages while in one of these; after it was
# resolved or closed (the chat ended), the visitor's next message opens a new one.
LIVE = Conversation.WORKING
# How often an open widget says it is still there (three missed: the visitor is gone), and
# how long an agent's inbox counts as "someone is there" after its last sign of life.
HEARTBEAT_SECONDS = 30
HERE_WINDOW = timedelta(seconds=3 * HEARTBEAT_SECONDS)
AGENT_ONLINE_WINDOW = timedelta(minutes=3)

DEFAULTS = {
    "greeting": "",
    "greetings": {},  # the greeting in other languages: {"es": "¡Hola!", "pt-BR": "Olá!"}
    "color": "#2563eb",
    "logo_url": "",
    "prechat_name": "off",  # off / optional / required
    "prechat_email": "optional",
    "allowed_origins": [],  # besides our own; "https://*.example.com" matches subdomains
    "show_agent_typing": True,
    "typing_preview": False,  # agents see the visitor's draft as they type
    "email_after_minutes": 5,  # replies go by email after the visitor left this long
    "reply_time": "",  # "a few hours": what the offline state promises
}
PRECHAT_CHOICES = ("off", "optional", "required")


def widget_settings(inbox: Inbox) -> dict:
    """The inbox's widget settings with defaults filled in and types checked."""
    stored = inbox.settings if isinstance(inbox.settings, dict) else {}
    merged = {key: stored.get(key, default) for key, default in DEFAULTS.items()}
    for key, default in DEFAULTS.items():
        if not isinstance(merged[key], type(default)):
            merged[key] = default
    for key in ("prechat_name", "prechat_email"):
        if merged[key] not in PRECHAT_CHOICES:
            merged[key] = DEFAULTS[key]
    return merged


def greeting_for(config: dict, language: str) -> str:
    """The inbox's greeting in the visitor's language ("pt-BR", then "pt", then another
    "pt-…": a visitor from Portugal reads the Brazilian one rather than English), else its
    own greeting; "" for none (the widget's translated default)."""
    greetings = {
        lang.lower(): text
        for lang, text in config["greetings"].items()
        if isinstance(text, str) and text.strip()
    }
    return in_language(greetings, language) or config["greeting"]


def widget_inbox(key: str) -> Inbox | None:
    return Inbox.objects.filter(widget_key=key, kind=Channel.WEBCHAT, is_active=True).first()


def origin_allowed(inbox: Inbox, origin: str, host: str) -> bool:
    """May a page served from `origin` use this inbox's widget? Our own pages always may;
    others only when listed in the inbox's allowed origins. A missing origin is refused."""
    parts = urlsplit(origin or "")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if parts.netloc.lower() == (host or "").lower():
        return True
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    for allowed in widget_settings(inbox)["allowed_origins"]:
        allowed = str(allowed).strip().rstrip("/").lower()
        if allowed == origin:
            return True
        scheme, _sep, pattern = allowed.partition("://*.")
        if _sep and parts.scheme == scheme and parts.netloc.lower().endswith("." + pattern):
            return True
    return False


def rate_allowed(what: str, address: str, per_minute: int | None = None) -> bool:
    """At most `per_minute` (WEBCHAT_CONNECTIONS_PER_MINUTE unless given) of `what` (new
    sockets, new visitors, files) per client address or visitor and minute, counted in the
    cache (shared by every process when there is Redis; per process while it is down)."""
    from helpdesk.ratelimit import hit

    key = f"webchat:{what}:{address}:{int(timezone.now().timestamp() // 60)}"
    return hit(key, 120) <= (per_minute or settings.WEBCHAT_CONNECTIONS_PER_MINUTE)


# --- Visitors and their tokens ---------------------------------------------------------------


def visitor_token(visitor: Visitor) -> str:
    return signing.dumps(visitor.key, salt=VISITOR_SALT)


def visitor_from_token(inbox: Inbox, token: str) -> Visitor | None:
    """The visitor a token names, in this inbox; None for a missing, forged or foreign one,
    and for a signed-in user's token older than IDENTIFIED_TOKEN_AGE (the site's page gets a
    fresh one each time it loads; the widget asks for one when the socket refuses it)."""
    if not token or not isinstance(token, str):
        return None
    try:
        key = signing.loads(token, salt=VISITOR_SALT)
    except signing.BadSignature:
        return None
    visitor = (
        Visitor.objects.select_related("identity__customer", "inbox")
        .filter(key=key, inbox=inbox)
        .first()
    )
    if visitor is not None and visitor.identified:
        try:
            signing.loads(token, salt=VISITOR_SALT, max_age=IDENTIFIED_TOKEN_AGE)
        except signing.SignatureExpired:
            return None
    return visitor


def resume_link(visitor: Visitor) -> str:
    """The address of our own chat page that continues the visitor's chat on any device, for
    the mail we send them ("" without PUBLIC_URL, or for a user the site signs in, whom the
    site brings back). The token is in the fragment, which browsers never send to a server."""
    if visitor.identified or not settings.PUBLIC_URL:
        return ""
    page = reverse("webchat:page", args=[visitor.inbox.widget_key])
    # By id, not by key: opening it changes the key (visitor_rekey), and the link must go on
    # working for the month, in the next browser too.
    token = signing.dumps({"visitor": visitor.pk}, salt=RESUME_SALT)
    return f"{settings.PUBLIC_URL}{page}#threadline-chat={token}"


def visitor_resumed(inbox: Inbox, resume: str) -> Visitor | None:
    """The visitor a resume_link names, in this inbox, while the link is fresh."""
    try:
        named = signing.loads(resume, salt=RESUME_SALT, max_age=RESUME_AGE)
    except signing.BadSignature:
        return None
    # Links mailed before they named the id carry the key.
    by = {"pk": named.get("visitor")} if isinstance(named, dict) else {"key": named}
    return Visitor.objects.filter(**by, inbox=inbox, identified=False).first()


def visitor_rekey(visitor: Visitor) -> Visitor:
    """Give `visitor` a new key: the tokens given out for it stop working, and its widgets
    open elsewhere start over as new visitors (the socket closes them, see consumers)."""
    Visitor.objects.filter(pk=visitor.pk).update(key=new_public_key())
    publish_customer_event(visitor.identity.customer_id, "rekeyed", visitor=visitor.pk)
    return visitor_reload(visitor)


def user_hash(inbox: Inbox, user_id: str) -> str:
    """What the site computes on its server to vouch for its user (HMAC-SHA256, hex)."""
    return hmac.new(inbox.secret.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()


def visitor_session(
    *,
    inbox: Inbox,
    token: str = "",
    user_id: str = "",
    user_hash_given: str = "",
    name: str = "",
    language: str = "",
    zone: str = "",
    page_url: str = "",
    user_agent: str = "",
    resume: str = "",
) -> Visitor:
    """The visitor behind `token`, or a new one. With `user_id` the site vouches for who this
    is (`user_hash_given` must be its HMAC with the inbox secret): the visitor is linked to
    that customer and sees their history. A bad hash is refused with ValidationError.
    `resume`, from a resume_link, names the visitor to continue as, on this device too."""
    if user_id:
        user_id = str(user_id)[:200]
        if not hmac.compare_digest(user_hash(inbox, user_id), str(user_hash_given or "")):
            raise ValidationError(_("The user identity could not be verified."))
    visitor = visitor_from_token(inbox, token)
    if resume and not user_id and (visitor is None or visitor_conversation(visitor) is None):
        # Not over a chat of the browser's own: a link someone sent to it would show them
        # whatever was typed next.
        resumed = visitor_resumed(inbox, resume)
        if resumed is not None and resumed != visitor:
            # The chat goes on here, and only here: whoever typed the address into the chat
            # may not be who reads its mail, and must not read what follows.
            visitor = visitor_rekey(resumed)
    if visitor is not None and visitor.identified and not user_id:
        # The user signed out: the browser starts afresh, and the token it held (or a copy
        # of it, in another tab) no longer opens their history.
        visitor_rekey(visitor)
        visitor = None
    if visitor is None:
        visitor = _visitor_new(inbox, name)
    if user_id:
        visitor = _identify(visitor, user_id, name)
    changes = {"last_seen_at": timezone.now()}
    if page_url and urlsplit(page_url).scheme in ("http", "https"):
        changes["page_url"] = page_url[:2000]
    if user_agent:
        changes["user_agent"] = user_agent[:300]
    Visitor.objects.filter(pk=visitor.pk).update(**changes)
    customer = visitor.identity.customer
    try:
        language = language_normalize(language) if language else ""
    except ValidationError:
        language = ""  # a browser's odd tag is not the visitor's fault
    # What the browser says of the visitor, where the profile does not say it yet.
    learnt = {"language": language, "name": name[:200]}
    if zone and not customer.timezone and zone in zone_names():  # the transcript's times
        learnt["timezone"] = zone
    learnt = {key: value for key, value in learnt.items() if value and not getattr(customer, key)}
    if learnt:
        type(customer).objects.filter(pk=customer.pk).update(**learnt)
    return visitor_reload(visitor)


def visitor_reload(visitor: Visitor) -> Visitor:
    return Visitor.objects.select_related("identity__customer", "inbox").get(pk=visitor.pk)


def _visitor_new(inbox: Inbox, name: str) -> Visitor:
    """A visitor with a web-chat identity of its own, and so a customer of its own."""
    identity = identity_get_or_create(kind=Channel.WEBCHAT, address=Visitor().key, name=name)
    return Visitor.objects.create(inbox=inbox, identity=identity, key=identity.address)


def site_user_address(inbox_id: int, user_id: str) -> str:
    """The web-chat address of a site's user, by the id the site gave (see _identify)."""
    return f"user:{inbox_id}:{user_id}"


def _identify(visitor: Visitor, user_id: str, name: str) -> Visitor:
    """Link the visitor to the customer the site says this is: their email identity when the
    id is an email address, else a web-chat identity for the site's user id."""
    try:
        validate_email(user_id)
        kind, address = Channel.EMAIL, user_id
    except ValidationError:
        # The site's own id: user 42 of one site is not user 42 of another site we serve.
        kind, address = Channel.WEBCHAT, site_user_address(visitor.inbox_id, user_id)
    target = identity_get_or_create(kind=kind, address=address, name=name)
    target_customer = target.customer.merged_into or target.customer
    if visitor.identified and visitor.identity.customer_id != target_customer.pk:
        # This browser was someone else's: a new visitor, so neither sees the other's history.
        visitor = _visitor_new(visitor.inbox, name)
    current = visitor.identity.customer
    if current.pk == target_customer.pk:
        pass
    elif _typed_by_another(target, target_customer, visitor):
        # Someone typed this address into a chat of theirs: the site's word outweighs theirs.
        # It moves to this user, whose history must not join a profile a stranger's browser
        # reads; the typed chat stays the typist's.
        Identity.objects.filter(pk=target.pk).update(customer=current)
    else:
        # An anonymous visitor's profile holds only what this browser did: it joins the customer.
        customer_merge(source=current, target=target_customer)
    Identity.objects.filter(pk=target.pk, verified=False).update(verified=True)
    Visitor.objects.filter(pk=visitor.pk).update(identified=True)
    return visitor_reload(visitor)


def _typed_by_another(target: Identity, customer, visitor: Visitor) -> bool:
    """Whether an address no site vouched for came to `customer` by an anonymous visitor
    typing it, in a browser other than this one."""
    return (
        not target.verified
        and Visitor.objects.filter(
            identity__customer=customer, email=target.address, identified=False
        )
        .exclude(pk=visitor.pk)
        .exists()
    )


# How long a transcript not yet sent counts as on its way (its task retries meanwhile).
TRANSCRIPT_TRYING = timedelta(hours=1)
# A visitor may correct a mistyped address, not collect other people's: each unconfirmed one
# joins their profile, and mail from it would land there.
EMAILS_TYPED_MAX = 3


def visitor_contact(visitor: Visitor, *, name: str = "", email: str = "") -> Visitor:
    """The visitor tells us their name and email (pre-chat form, or when we offer to answer by
    email). The email is where replies follow them; it joins their profile only when nobody
    else's profile has it: an agent merges the two after checking it is the same person."""
    customer = visitor.identity.customer
    name = without_reordering(name).strip()[:200]
    email = email.strip().lower()
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise ValidationError(_("Please enter a valid email address.")) from None
    # Unconfirmed addresses that never wrote to us: typed (here, or by an agent), not ones
    # the customer's own mail or a merge brought.
    typed = Identity.objects.filter(
        customer=customer, kind=Channel.EMAIL, verified=False, last_seen_at=None
    )
    if email and typed.count() >= EMAILS_TYPED_MAX and not typed.filter(address=email).exists():
        raise ValidationError(
            _("That is enough email addresses for one chat; tell us in the chat if yours changed.")
        )
    with transaction.atomic():
        if name and customer.name != name and not visitor.identified:
            type(customer).objects.filter(pk=customer.pk).update(name=name)
        if name:  # how the timeline names the visitor's messages
            Identity.objects.filter(pk=visitor.identity_id).update(display_name=name)
        if email and email != visitor.email:
            Visitor.objects.filter(pk=visitor.pk).update(email=email)
            try:
                identity_add(customer=customer, kind=Channel.EMAIL, address=email)
            except AddressTaken:
                # Before the first message there is no conversation yet: visitor_message flags
                # the one it opens.
                if (conversation := visitor_conversation(visitor)) is not None:
                    _flag_email_elsewhere(conversation, email)
            except ValidationError:
                pass  # already this customer's
    return visitor_reload(visitor)


def continue_link_send(visitor: Visitor, email: str) -> None:
    """The visitor gave `email`, another customer's address: often the same person, on
    another device. If that customer chatted in this inbox before, their conversation goes
    to the address, with the link that continues it in any browser (resume_link): whoever
    reads that mailbox may go on with it, and the typist learns nothing of it. Once per
    address until that chat goes on (transcript_request)."""
    email_identity = (
        Identity.objects.filter(kind=Channel.EMAIL, address=email, opted_out_at=None)
        .exclude(customer=visitor.identity.customer_id)
        .first()
    )
    if email_identity is None:
        return
    earlier = Visitor.objects.filter(
        inbox=visitor.inbox, identity__customer=email_identity.customer_id, identified=False
    ).select_related("identity__customer", "inbox")
    for other in earlier.order_by("-last_seen_at")[:5]:
        if not resume_link(other) or (conversation := visitor_conversation(other)) is None:
            continue  # no link to give (no PUBLIC_URL), or nothing to go on with
        try:
            transcript_request(other, conversation, to=email_identity, why="continue")
        except ValidationError:
            pass  # already on its way to that address
        return


def _flag_email_elsewhere(conversation: Conversation, email: str) -> None:
    reason = (
        f"The visitor gave {email}, the address of another customer. Merge the two profiles "
        "if they are the same person; until then replies are not emailed there."
    )
    if not conversation.flag_reason:  # an earlier flag (a forged reference) says more
        conversation.flag_reason = reason[:300]
        Conversation.objects.filter(pk=conversation.pk, flag_reason="").update(
            flag_reason=conversation.flag_reason
        )


def email_pending(visitor: Visitor) -> bool:
    """The visitor gave an email that is another customer's: replies go there only once an
    agent has merged the two (the widget says so rather than promising mail)."""
    return bool(visitor.email) and visitor_email(visitor) is None


def visitor_email(visitor: Visitor) -> Identity | None:
    """The email identity of the visitor's customer that replies may go to: the one they gave
    in the widget, else any other of theirs."""
    emails = Identity.objects.filter(
        customer=visitor.identity.customer_id, kind=Channel.EMAIL, opted_out_at=None
    )
    if visitor.email:
        return emails.filter(address=visitor.email).first()
    return emails.order_by("-verified", "-last_seen_at").first()


def visitor_seen(visitor_id: int, *, opened: int = 0) -> None:
    """A socket of the visitor opened (+1), closed (-1) or said it is still there (0). A chat
    in a team's queue moves when its visitor comes or goes (routing.services._waiting): the
    queue is served and its waiting visitors told their places again."""
    from routing.services import IN_QUEUE, queue_nudge

    changes = {"last_seen_at": timezone.now()}
    if opened:
        changes["open_sockets"] = Greatest(F("open_sockets") + opened, 0)
    Visitor.objects.filter(pk=visitor_id).update(**changes)
    if opened:
        waiting = Conversation.objects.filter(
            IN_QUEUE, customer__identities__visitor=visitor_id, inbox__visitors=visitor_id
        )
        queue_nudge(waiting.values_list("team_id", flat=True).first())


def visitor_here(visitor: Visitor, now=None) -> bool:
    """Has the visitor the widget open now? A count left high by a crashed server stops
    counting once the heartbeat it should have sent is late (HERE_WINDOW)."""
    now = now or timezone.now()
    seen = visitor.last_seen_at or visitor.created_at
    return visitor.open_sockets > 0 and now - seen < HERE_WINDOW


def visitors_here(now) -> Q:
    """visitor_here, as a filter on visitors."""
    return Q(open_sockets__gt=0, last_seen_at__gt=now - HERE_WINDOW)


def visitor_away(visitor: Visitor, now=None) -> bool:
    """Has the visitor had no open widget for the inbox's `email_after_minutes`?"""
    now = now or timezone.now()
    after = timedelta(minutes=max(widget_settings(visitor.inbox)["email_after_minutes"], 0))
    seen = visitor.last_seen_at or visitor.created_at
    return not visitor_here(visitor, now) and now - seen >= after


# --- What the visitor reads ------------------------------------------------------------------


def visitor_conversation(visitor: Visitor) -> Conversation | None:
    """The conversation the widget shows: the customer's latest in this inbox or one this
    visitor wrote in (wherever it went on: email, SMS...); for a visitor the site identified,
    the customer's latest on any channel, which the chat then continues, unless agents are
    asked to check who wrote it (a forged mail must not become the user's own history)."""
    customer = visitor.identity.customer
    customer_id = customer.merged_into_id or customer.pk
    conversations = Conversation.objects.filter(customer_id=customer_id, merged_into=None)
    if not visitor.identified:
        conversations = conversations.filter(
            Q(inbox=visitor.inbox) | Q(messages__identity=visitor.identity)
        )
    else:
        conversations = conversations.filter(Q(inbox=visitor.inbox) | Q(flag_reason=""))
    return conversations.select_related("inbox").order_by("-last_activity_at", "-id").first()


def visible_messages(
    conversation: Conversation | int, *, after: int = 0, limit: int = 500
) -> list[Message]:
    """What the customer may read of `conversation`: their messages and our replies on every
    channel, never notes; emailed copies of chat replies are left out (they saw the original).
    Files are read only for the messages that have some (see files_of): most have none, and
    the widget asks after every message it sends."""
    messages = list(
        Message.objects.filter(
            conversation=conversation,
            direction__in=(Message.Direction.INBOUND, Message.Direction.OUTBOUND),
            id__gt=after,
        )
        .exclude(status=Message.Status.FAILED)
        .exclude(metadata__has_key="follow_up_of")
        .select_related("author")
        .annotate(has_files=Exists(Attachment.objects.filter(message=OuterRef("pk"))))
        .order_by("id")[:limit]
    )
    prefetch_related_objects([m for m in messages if m.has_files], "attachments")
    return messages


def files_of(message: Message):
    """A message's attachments, without a query for one visible_messages found has none."""
    return message.attachments.all() if getattr(message, "has_files", True) else ()


def media_url(attachment) -> str:
    return reverse("webchat:media", args=[signing.dumps(attachment.pk, salt=MEDIA_SALT)])


def message_json(message: Message) -> dict:
    """A message as the widget shows it: text only, the agent by first name."""
    agent = message.direction == Message.Direction.OUTBOUND
    return {
        "id": message.pk,
        "from": "agent" if agent else "customer",
        "author": (message.author.name.split(" ")[0] if agent and message.author else ""),
        "text": message.text,
        "channel": message.channel,
        "created_at": message.created_at.isoformat(),
        "read": bool(message.read_at),
        "attachments": [
            {
                "name": item.filename,
                "type": item.content_type,
                "size": item.size,
                "url": media_url(item) if item.file else "",
                "image": item.content_type in IMAGE_TYPES,
            }
            for item in files_of(message)
        ],
    }


def takes_messages(conversation: Conversation) -> bool:
    """Whether the visitor's next message goes into `conversation`: while agents work on it,
    and after the chat ended when an agent wrote in it since (a question asked then is
    answered where it was asked, and the answer reopens the conversation)."""
    if conversation.status in LIVE:
        return True
    return (
        conversation.status == Conversation.Status.RESOLVED
        and conversation.resolved_at is not None
        and conversation.messages.filter(
            direction=Message.Direction.OUTBOUND,
            author__isnull=False,
            created_at__gt=conversation.resolved_at,
        )
        .exclude(metadata__has_key="follow_up_of")
        .exists()
    )


def conversation_json(conversation: Conversation | None) -> dict | None:
    """What the widget knows of a conversation; `queue` (position, expected wait) while it
    waits for an agent, so the visitor sees where they stand."""
    from routing.services import queue_status

    if conversation is None:
        return None
    waiting = conversation.status == Conversation.Status.OPEN and not conversation.assignee_id
    live = takes_messages(conversation)
    return {
        "id": conversation.pk,
        "live": live,
        # An agent has answered: only then may the visitor end the chat and rate it.
        "answered": conversation.first_response_at is not None,
        "rating": conversation.rating,
        "queue": queue_status(conversation).as_dict() if waiting else None,
        # Asked for already (the widget then says it is on its way instead of offering it).
        "transcript": not live
        and conversation.events.filter(
            kind=ConversationEvent.Kind.CHAT, data__state="transcript"
        ).exists(),
    }


# --- What the visitor does -------------------------------------------------------------------


def visitor_message(
    visitor: Visitor,
    *,
    text: str,
    client_id: str,
    attachments: tuple[InboundAttachment, ...] = (),
    conversation_id: int | None = None,
) -> Received:
    """Store what the visitor wrote. Resending the same client id returns the stored message."""
    text = text if isinstance(text, str) else ""
    if len(text) > TEXT_MAX_CHARS:
        limit = {"n": TEXT_MAX_CHARS}
        raise ValidationError(_("Messages are limited to %(n)s characters.") % limit)
    if not (text.strip() or attachments):
        raise ValidationError(_("Write a message first."))
    if not client_id or not isinstance(client_id, str) or len(client_id) > 64:
        raise ValidationError("Each message needs a client id of at most 64 characters.")
    from conversations.services import message_receive

    required = widget_settings(visitor.inbox)["prechat_email"] == "required"
    if required and not visitor.email and visitor_email(visitor) is None:
        raise ValidationError(_("Tell us your email address first."))
    # The widget's socket knows which conversation it shows: one read instead of a search.
    conversation = (
        Conversation.objects.filter(
            pk=conversation_id, customer=visitor.identity.customer_id, merged_into=None
        ).first()
        if conversation_id
        else None
    ) or visitor_conversation(visitor)
    live = conversation is not None and takes_messages(conversation)
    received = message_receive(
        inbox=visitor.inbox,
        inbound=InboundMessage(
            channel=Channel.WEBCHAT,
            address=visitor.identity.address,
            text=text,
            client_id=client_id,
            conversation=conversation if live else None,
            force_new_conversation=not live,
            attachments=attachments,
            metadata={"page": visitor.page_url} if visitor.page_url else {},
        ),
    )
    if not live and email_pending(visitor):  # a new conversation: the agent is asked to merge
        _flag_email_elsewhere(received.message.conversation, visitor.email)
    return received


def messages_mark_read(conversation: Conversation, *, by_customer: bool, up_to: int) -> int:
    """Mark the other side's messages up to `up_to` as read and tell both sides."""
    direction = Message.Direction.OUTBOUND if by_customer else Message.Direction.INBOUND
    unread = conversation.messages.filter(direction=direction, id__lte=up_to, read_at=None)
    now = timezone.now()
    with transaction.atomic():
        if by_customer:
            count = unread.filter(channel=Channel.WEBCHAT).update(
                read_at=now, status=Message.Status.READ
            )
        else:
            count = unread.update(read_at=now)
        if count:
            publish_conversation_event(
                conversation,
                "read",
                by="customer" if by_customer else "agent",
                customer_event={
                    "event": "read",
                    "conversation": conversation.pk,
                    "by": "customer" if by_customer else "agent",
                    "up_to": up_to,
                },
            )
    return count


def _answered(conversation: Conversation) -> bool:
    """Read from the database: the caller's copy may predate the agent's answer."""
    return Conversation.objects.filter(pk=conversation.pk, first_response_at__isnull=False).exists()


def chat_end(conversation: Conversation, *, actor=None) -> Conversation:
    """Either side ends the chat: the conversation is resolved and the widget offers a rating
    and the transcript. The customer's next message opens a new conversation. A visitor may
    not end one nobody has answered yet: that would resolve their question unread (the widget
    offers no "End the chat" until an answer came; see conversation_json)."""
    if actor is None and not _answered(conversation):
        raise ValidationError(
            _("Nobody has answered yet: your message stays with us, and the answer comes here.")
        )
    with transaction.atomic():
        conversation = conversation_set_status(
            conversation=conversation, status=Conversation.Status.RESOLVED, actor=actor
        )
        _event(
            conversation,
            ConversationEvent.Kind.CHAT,
            actor,
            state="ended",
            by="agent" if actor else "customer",
        )
        # conversation_set_status told the widget.
        publish_conversation_event(conversation, "chat", state="ended")
    return conversation


def conversation_rate(conversation: Conversation, *, rating, comment: str = "") -> Conversation:
    if not isinstance(rating, int) or isinstance(rating, bool) or not 1 <= rating <= 5:
        raise ValidationError(_("Choose a rating from 1 to 5."))
    if not _answered(conversation):
        raise ValidationError(_("Nobody has answered yet: there is nothing to rate."))
    comment = (comment or "").strip()[:2000] if isinstance(comment, str) else ""
    with transaction.atomic():
        Conversation.objects.filter(pk=conversation.pk).update(
            rating=rating, rating_comment=comment
        )
        _event(conversation, ConversationEvent.Kind.RATED, rating=rating, comment=comment)
        publish_conversation_event(conversation, "rated", rating=rating)
    conversation.refresh_from_db()
    return conversation


def transcript_request(
    visitor: Visitor, conversation: Conversation, *, to: Identity | None = None, why: str = ""
) -> ConversationEvent:
    """Email the conversation to the visitor's address (or `to`, another address of their
    customer's); the task sends it once. `why="continue"`: the address was given in a chat in
    another browser (continue_link_send), which the mail says first."""
    from channels_adapters.tasks import send_transcript

    email = to or visitor_email(visitor)
    if email is None:
        raise ValidationError(_("Tell us your email address first."))
    with transaction.atomic():
        # Once per address until the chat goes on: the widget must not be a way to send our
        # mail, again and again, to an address nobody confirmed. One that failed for good
        # (still unsent after TRANSCRIPT_TRYING) may be asked for again. The conversation is
        # locked first: two clicks at once, or two browsers, ask one after the other.
        Conversation.objects.select_for_update().filter(pk=conversation.pk).exists()
        last = (
            conversation.events.filter(
                kind=ConversationEvent.Kind.CHAT, data__state="transcript", data__to=email.address
            )
            .order_by("-created_at")
            .first()
        )
        going = last and (
            last.data.get("sent_at") or timezone.now() - last.created_at < TRANSCRIPT_TRYING
        )
        # Going on means an agent answered: else writing a line and asking again would send
        # our mail to that address as often as one likes.
        if (
            going
            and not conversation.messages.filter(
                created_at__gt=last.created_at,
                direction=Message.Direction.OUTBOUND,
                author__isnull=False,
            ).exists()
        ):
            raise ValidationError(
                _("The transcript is already on its way to %(email)s.") % {"email": email.address}
            )
        event = _event(
            conversation,
            ConversationEvent.Kind.CHAT,
            state="transcript",
            to=email.address,
            visitor=visitor.pk,  # whose chat the mail's link continues
            **({"why": why} if why else {}),
        )
        transaction.on_commit(lambda: send_transcript.delay(event.pk), robust=True)
    return event


# Asked by every open widget's ping: worked out once per inbox and process every 10 seconds.
# A save of what it depends on (an agent's availability, hours, a team, an inbox) in this
# process empties it at once.
_availability = ShortCache(
    10, "helpdesk.User", "routing.BusinessHours", "routing.TeamMembership", Inbox
)


def availability_now(inbox: Inbox) -> dict:
    """availability(), in the active language (its reply time is words)."""
    return _availability.get((inbox.pk, translation.get_language()), lambda: availability(inbox))


def supported_language(language: str) -> str:
    """The closest language we ship: "pt-BR" -> "pt"; anything else English."""
    code = (language or "").split("-")[0].lower()
    return code if code in dict(settings.LANGUAGES) else "en"


def availability(inbox: Inbox, now=None) -> dict:
    """What the widget says about when an answer comes: online only when an agent of the
    inbox's team has the inbox open and set themselves online, within business hours."""
    from django.contrib.auth import get_user_model

    from routing.hours import is_open, next_opening, schedule_for
    from routing.replies import expected_reply, reply_time_text

    now = now or timezone.now()
    schedule = schedule_for(inbox)
    open_now = is_open(schedule, now)
    agents = get_user_model().objects.filter(
        is_active=True,
        availability="online",
        last_seen_at__gte=now - AGENT_ONLINE_WINDOW,
    )
    if inbox.default_team_id:
        agents = agents.filter(team_memberships__team_id=inbox.default_team_id)
    online = open_now and agents.exists()
    opens_at = None if open_now else next_opening(schedule, now)
    reply_time = widget_settings(inbox)["reply_time"] or reply_time_text(expected_reply(inbox))
    return {
        "online": online,
        "reply_time": reply_time,
        "opens_at": opens_at.isoformat() if opens_at else None,
        "timezone": schedule.timezone if schedule else settings.TIME_ZONE,
    }
