"""The chat widget as a channel, and the email that follows a visitor who left."""

from __future__ import annotations

from datetime import timedelta
from email.utils import make_msgid
from zoneinfo import ZoneInfo

from django.core.mail import EmailMessage
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from channels_adapters.base import Adapter, Capabilities, SendResult
from conversations.models import Channel, Conversation, ConversationEvent, Message, Visitor
from conversations.realtime import publish_customer_event
from helpdesk.middleware import zone_named

# Agent replies older than this are not emailed any more: the visitor has had them in the
# widget for a week, or never came back to an address we know.
FOLLOW_UP_WITHIN = timedelta(days=7)


class WebchatAdapter(Adapter):
    """The chat widget. A reply is "sent" once stored and announced to the visitor's sockets;
    the widget reads it from the database, so announcing twice cannot show it twice. When the
    visitor has left, the reply follows them by email (see `follow_up`)."""

    kind = Channel.WEBCHAT
    capabilities = Capabilities(attachments=True, idempotent_send=True)

    def send(self, message):
        publish_customer_event(
            message.conversation.customer_id,
            "message",
            conversation=message.conversation_id,
            message=message.pk,
        )
        visitor = Visitor.objects.filter(identity=message.identity_id).first()
        if visitor is not None:
            from channels_adapters.tasks import webchat_follow_up
            from channels_adapters.webchat.chat import visitor_away

            if visitor_away(visitor):
                transaction.on_commit(
                    lambda: webchat_follow_up.delay(message.conversation_id), robust=True
                )
        return SendResult()


def unread_replies():
    """Agent chat replies of the last FOLLOW_UP_WITHIN that visitors have not read, nor been
    emailed."""
    return Message.objects.filter(
        channel=Channel.WEBCHAT,
        direction=Message.Direction.OUTBOUND,
        read_at=None,
        status__in=(Message.Status.SENT, Message.Status.DELIVERED),
        created_at__gte=timezone.now() - FOLLOW_UP_WITHIN,
    ).exclude(metadata__has_key="emailed_in")


def follow_up(conversation_id: int) -> Message | None:
    """Email the visitor the chat replies they missed, once they have been away long enough:
    one email for all of them, threaded with a reply-to token, so their answer lands in this
    conversation. Safe to run twice: the replies are marked as emailed in the same commit."""
    from channels_adapters.webchat.chat import resume_link, visitor_away, visitor_email
    from conversations.services import _event, reply_send

    with transaction.atomic():
        conversation = (
            Conversation.objects.select_for_update(of=("self",))
            .select_related("customer", "inbox")
            .filter(pk=conversation_id, merged_into=None)
            .first()
        )
        if conversation is None:
            return None
        replies = list(
            unread_replies()
            .filter(conversation=conversation)
            .select_related("author", "identity")
            .order_by("id")
        )
        visitor = (
            Visitor.objects.select_related("inbox", "identity")
            .filter(identity__in=[m.identity_id for m in replies])
            .order_by("-last_seen_at")
            .first()
        )
        if not replies or visitor is None or not visitor_away(visitor):
            return None
        email = visitor_email(visitor)
        left = conversation.events.filter(kind=ConversationEvent.Kind.CHAT, data__state="async")
        if conversation.last_inbound_at:
            left = left.filter(created_at__gte=conversation.last_inbound_at)
        if not left.exists():
            # Shown on the timeline: the chat went asynchronous, and where answers go now.
            _event(
                conversation,
                ConversationEvent.Kind.CHAT,
                state="async",
                to=email.address if email else "",
            )
        if email is None:
            return None
        with translation.override(conversation.customer.language or None):
            text = _follow_up_text(conversation, replies, resume_link(visitor))
        message = reply_send(
            conversation=conversation,
            author=replies[-1].author,
            text=text,
            identity=email,
            client_id=f"follow-up:{replies[0].pk}:{replies[-1].pk}",
            # A copy of replies already counted: no SLA or assignment of its own, and no
            # agent chose to switch channels (the timeline would say they did).
            automatic="follow_up",
        )
        Message.objects.filter(pk=message.pk).update(
            metadata={**message.metadata, "follow_up_of": [m.pk for m in replies]}
        )
        for reply in replies:
            reply.metadata = {**reply.metadata, "emailed_in": message.pk}
            reply.save(update_fields=["metadata", "updated_at"])
    return message


def _follow_up_text(conversation: Conversation, replies: list[Message], link: str) -> str:
    # Not "you left before we answered": the visitor may have been there and not read it.
    seen = ngettext(
        "You have not seen our reply in the chat yet, so here it is:",
        "You have not seen our replies in the chat yet, so here they are:",
        len(replies),
    )
    parts = [seen, ""]
    for reply in replies:
        name = reply.author.name if reply.author else conversation.inbox.name
        parts += [f"{name}:", reply.text, ""]
    parts.append(_continue_text(link))
    return "\n".join(parts)


def _continue_text(link: str) -> str:
    """How the visitor goes on from our mail; `link` continues the chat this browser had, on
    whichever device reads the mail (see chat.resume_link)."""
    if not link:
        return _("Reply to this email to continue the conversation.")
    return _(
        "Reply to this email to continue the conversation, or go on in the chat, "
        "on any device: %(link)s"
    ) % {"link": link}


def follow_ups_due() -> int:
    """Every conversation with chat replies waiting on a visitor who left: the periodic sweep
    behind `WebchatAdapter.send`, for replies sent while the visitor was still there."""
    from channels_adapters.tasks import webchat_follow_up

    conversation_ids = set(unread_replies().values_list("conversation_id", flat=True))
    for conversation_id in sorted(conversation_ids):
        webchat_follow_up.delay(conversation_id)
    return len(conversation_ids)


# A visitor who never wrote and has not been back this long leaves no trace.
SILENT_VISITORS_KEPT = timedelta(days=30)


def silent_visitors_prune() -> int:
    """Delete visitors who opened the widget but never wrote, gave no address and were not
    identified, once they have been away SILENT_VISITORS_KEPT: each made a customer profile
    nobody needs. Returns how many profiles went."""
    from django.db.models import Count

    from conversations.models import Customer

    stale = timezone.now() - SILENT_VISITORS_KEPT
    silent = (
        Customer.objects.filter(
            identities__visitor__last_seen_at__lt=stale,
            identities__visitor__identified=False,
            identities__visitor__email="",
            merged_into=None,
        )
        .annotate(conversation_count=Count("conversations", distinct=True))
        .annotate(identity_count=Count("identities", distinct=True))
        .filter(conversation_count=0, identity_count=1, merged_from=None)
    )
    ids = list(silent.values_list("pk", flat=True)[:10_000])
    Customer.objects.filter(pk__in=ids).delete()  # its identity and visitor go with it
    return len(ids)


def transcript_send(event_id: int) -> bool:
    """Email a chat's transcript as the customer asked (a CHAT "transcript" event); once."""
    from channels_adapters.email.adapter import (
        EmailAdapter,
        _domain,
        reply_address,
        thread_subject,
    )
    from channels_adapters.email.parsing import format_address
    from channels_adapters.webchat.chat import files_of, resume_link, visible_messages
    from conversations.models import Inbox, Visitor

    with transaction.atomic():
        event = (
            ConversationEvent.objects.select_for_update(of=("self",))
            .select_related("conversation__customer", "conversation__inbox")
            .filter(pk=event_id, kind=ConversationEvent.Kind.CHAT, data__state="transcript")
            .first()
        )
        if event is None or event.data.get("sent_at"):
            return False
        conversation = event.conversation
        sender = (
            Inbox.objects.filter(kind=Channel.EMAIL, is_active=True)
            .filter(default_team_id=conversation.inbox.default_team_id)
            .first()
            or Inbox.objects.filter(kind=Channel.EMAIL, is_active=True).first()
        )
        # Times as the visitor's browser told us its zone, else UTC.
        zone = zone_named(conversation.customer.timezone) or ZoneInfo("UTC")
        with translation.override(conversation.customer.language or None):
            lines = [_("Transcript of conversation #%(n)s") % {"n": conversation.pk}, ""]
            if event.data.get("why") == "continue":
                # Mailed because someone gave this address in a chat in another browser.
                lines[:0] = [
                    _(
                        "This address was given in our chat in another browser. If that was "
                        "you, the link at the end goes on with this conversation there; if "
                        "not, ignore this email."
                    ),
                    "",
                ]
            else:
                # The address was typed into the chat, by its owner or not.
                lines[:0] = [
                    _("You asked for this in our chat. If not, ignore this email."),
                    "",
                ]
            for message in visible_messages(conversation, limit=5000):
                who = (
                    (message.author.name if message.author else conversation.inbox.name)
                    if message.direction == Message.Direction.OUTBOUND
                    else _("You")
                )
                at = message.created_at.astimezone(zone)
                lines.append(f"[{at:%Y-%m-%d %H:%M} {at.tzname()}] {who}:")
                # A message that was only a file would read as nothing: name the files.
                files = [f"[{_('File')}: {a.filename}]" for a in files_of(message)]
                lines += [text for text in (message.text, *files) if text] + [""]
            # And how to go on: by answering the mail, or in this chat on another device.
            visitor = Visitor.objects.filter(pk=event.data.get("visitor")).first()
            lines.append(_continue_text(resume_link(visitor) if visitor else ""))
            # Not the chat's first words (thread_subject's choice for a chat): anyone can
            # type an address and write those, and they would head our mail.
            subject = (
                thread_subject(conversation)
                if conversation.subject
                else _("Transcript of your chat with %(inbox)s [#%(n)s]")
                % {"inbox": conversation.inbox.name, "n": conversation.pk}
            )
        # From the inbox by name, and answerable: a reply lands in this conversation.
        mail = EmailMessage(
            subject=subject,
            body="\n".join(lines),
            from_email=format_address(conversation.inbox.name, sender.address)
            if sender and sender.address
            else None,
            to=[event.data["to"]],
            reply_to=[reply_address(conversation, sender)] if sender and sender.address else None,
            # Our domain, not the machine's name.
            headers={"Message-ID": make_msgid(domain=_domain(sender))} if sender else None,
            connection=EmailAdapter.connection(sender) if sender else None,
        )
        mail.send()
        event.data = {**event.data, "sent_at": timezone.now().isoformat()}
        event.save(update_fields=["data"])
    return True
