"""Email: RFC 822 in (IMAP, MTA pipe, HTTP), SMTP out, threaded by our own headers.

Inbox settings (admin, `settings`): `smtp_host`, `smtp_port`, `smtp_username`, `smtp_use_tls`,
`smtp_use_ssl`, `smtp_timeout`; `credentials`: `smtp_password`. Without `smtp_host` the
site-wide EMAIL_* settings are used (in development: files under var/mail/).
"""

from __future__ import annotations

import re
import smtplib
from email.utils import make_msgid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import BadHeaderError, EmailMultiAlternatives, get_connection
from django.db.models import Exists, OuterRef, Q
from django.utils.html import escape, linebreaks, urlize
from django.utils.text import Truncator

from channels_adapters.base import (
    Adapter,
    Capabilities,
    Ignore,
    InvalidPayload,
    PermanentError,
    SendResult,
    TransientError,
)
from channels_adapters.email.parsing import (
    FORWARD_SUBJECT,
    NotAnEmail,
    ParsedEmail,
    bare_address,
    collision_key,
    format_address,
    forwarded_sender,
    parse_email,
)
from channels_adapters.models import InboundEvent
from conversations.models import Channel, Conversation, Identity, Message
from conversations.selectors import id_given
from conversations.services import (
    InboundMessage,
    StatusUpdate,
    conversation_accepts_sender,
    our_addresses,
    ours,
)

SUBJECT_NUMBER = re.compile(r"\[#(\d{1,12})\]")
REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|fw|fwd|res|tr|rv)\s*:\s*)+", re.I)


def loop_marker(inbox) -> str:
    """Our X-Loop value (RFC 822-style loop detection) for mail sent from `inbox`."""
    return f"threadline-{inbox.pk}@{_domain(inbox)}"


def agent_mail_loop_marker() -> str:
    """The X-Loop value of our mail to agents (conversations.notification_mail): such a mail
    forwarded into one of our inboxes is set aside, or it would open a conversation, tell an
    agent, and be mailed and forwarded again. Keyed with the secret key, so that nobody else
    can put it on a mail to have it set aside."""
    from django.utils.crypto import salted_hmac

    key = salted_hmac("threadline.agent-mail.x-loop", "x-loop").hexdigest()[:16]
    domain = bare_address(settings.DEFAULT_FROM_EMAIL).rpartition("@")[2] or "localhost"
    return f"threadline-agents-{key}@{domain}"


def _domain(inbox) -> str:
    address = inbox.address or bare_address(settings.DEFAULT_FROM_EMAIL)
    return address.rpartition("@")[2] or "localhost"


def reply_address(conversation: Conversation, inbox) -> str:
    """support+<token>@domain: replies to it thread by the token, whatever they say."""
    local, _, domain = (inbox.address or bare_address(settings.DEFAULT_FROM_EMAIL)).partition("@")
    return f"{local}+{conversation.reply_token}@{domain}"


def _deliverable(address: str) -> bool:
    """Can our mail reach `address`? Not with letters outside ASCII before the @ (RFC 6531
    needs SMTPUTF8 end to end); a domain of any script goes as IDNA."""
    return address.partition("@")[0].isascii()


# Mail providers anyone can have an address at: sharing one with the sender says nothing.
PUBLIC_MAIL_DOMAINS = frozenset(
    "gmail.com googlemail.com outlook.com hotmail.com live.com msn.com yahoo.com ymail.com "
    "icloud.com me.com mac.com aol.com proton.me protonmail.com gmx.com gmx.de gmx.net web.de "
    "mail.com mail.ru yandex.ru yandex.com qq.com 163.com 126.com zoho.com fastmail.com "
    "hotmail.fr hotmail.co.uk outlook.fr yahoo.fr yahoo.co.uk yahoo.es libero.it orange.fr "
    "free.fr laposte.net sapo.pt uol.com.br bol.com.br terra.com.br t-online.de".split()
)


def _copies_strangers(sender: str, cc) -> str:
    """Why agents should check a new conversation from a customer we know that copies
    someone new to them, else "". Every reply goes to those copied too, and anyone can write
    a customer's From and copy themselves. A colleague at the sender's own company (not a
    public mail provider) and anyone copied on the customer's mail before raise nothing."""
    sender = sender.lower()
    domain, own = sender.rpartition("@")[2], our_addresses()
    copied = {
        address.lower()
        for _, address in cc
        if address
        and address.lower() != sender
        and not ours(address, own)
        and (address.lower().rpartition("@")[2] != domain or domain in PUBLIC_MAIL_DOMAINS)
    }
    if not copied:
        return ""
    known = Identity.objects.filter(kind=Channel.EMAIL, address=sender).first()
    if known is None:  # a newcomer: no account to protect yet
        return ""
    copied -= set(
        Identity.objects.filter(
            kind=Channel.EMAIL, participating_in__customer=known.customer_id
        ).values_list("address", flat=True)
    )
    if not copied:
        return ""
    strangers = sorted(copied)
    return (
        f"Copies {', '.join(strangers[:3])}{', …' if len(strangers) > 3 else ''}, new to this "
        "customer: replies go there too, and anyone can write a customer's From. Check before "
        "sharing anything about the account, or stop copying them."
    )


def thread_subject(conversation: Conversation) -> str:
    """ "Re: <their subject> [#n]"; for a conversation that began without one (a chat, a
    text message), its first words, as the customer wrote them: our first mail in it answers
    nothing they sent by email, and an inbox's name means nothing to them."""
    subject = " ".join((conversation.subject or "").split())  # a header: one line
    subject = SUBJECT_NUMBER.sub("", REPLY_PREFIX.sub("", subject)).strip()
    if subject:
        return f"Re: {subject} [#{conversation.pk}]"
    first = (
        conversation.messages.filter(direction=Message.Direction.INBOUND)
        .exclude(text="")
        .order_by("id")
        .values_list("text", flat=True)
        .first()
    )
    words = SUBJECT_NUMBER.sub("", " ".join((first or "").split())).strip()
    words = Truncator(words).chars(60)
    return f"{words or f'Your conversation with {conversation.inbox.name}'} [#{conversation.pk}]"


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class EmailAdapter(Adapter):
    kind = Channel.EMAIL
    # Sending again is safe: the Message-ID is fixed before the first attempt, and receiving
    # systems (ours included) drop a second copy with the same Message-ID.
    # Most mail servers refuse a message over 25 MB, and base64 makes files a third larger.
    capabilities = Capabilities(
        html=True,
        subject=True,
        attachments=True,
        attachments_max_bytes=18 * 2**20,
        idempotent_send=True,
    )

    def send_refusal(self, message):
        address = message.identity.address if message.identity else ""
        if not _deliverable(address):
            # Django writes such a name as an encoded word, which no server delivers: said now,
            # rather than bounced later or lost.
            return (
                f"{address} has letters outside ASCII before the @: mail to it needs SMTPUTF8, "
                "which Threadline does not send yet. Answer on another channel, or ask the "
                "customer for another address."
            )
        return super().send_refusal(message)

    # --- Inbound ----------------------------------------------------------------------------

    def parse_inbound(self, event):
        try:
            parsed = parse_email(event.raw())
        except NotAnEmail as exc:
            raise InvalidPayload(f"Not an email: {exc}") from exc
        if agent_mail_loop_marker() in parsed.loop_markers:
            raise Ignore("Our own notification mail to an agent came back: nobody wrote it.")
        # A mail whose Message-ID another mail had is kept under its own key (see ingest).
        provider_id = parsed.message_id
        if event.dedupe_key.startswith(collision_key(parsed.message_id, "")):
            provider_id = event.dedupe_key
        # Seen before: one we sent, coming back; or one mail to two of our addresses (To
        # support@, Cc billing@), which the other inbox has already (one look-up for both):
        # the same id and, where the stored mail says, the same body (see ingest).
        other_inbox = ~Q(inbox_id=event.inbox_id) & Q(provider_id=provider_id)
        if digest := event.headers.get("digest"):
            same_body = InboundEvent.objects.filter(message=OuterRef("pk"), headers__digest=digest)
            other_inbox &= Exists(same_body)
        seen = (
            Message.objects.filter(channel=Channel.EMAIL)
            .filter(
                Q(direction=Message.Direction.OUTBOUND, provider_id=parsed.message_id) | other_inbox
            )
            .values_list("direction", "inbox__name", "conversation_id")
            .order_by()[:1]
        )
        seen = seen[0] if seen else None
        if seen and seen[0] == Message.Direction.OUTBOUND:
            raise Ignore("Our own message came back (its Message-ID is one we sent).")
        if seen:
            raise Ignore(
                f"The same mail came in through {seen[1]}: it is in conversation #{seen[2]}."
            )
        report = parsed.bounce
        if (
            report
            and Message.objects.filter(
                channel=Channel.EMAIL,
                direction=Message.Direction.OUTBOUND,
                provider_id=report.original_message_id,
            ).exists()
        ):
            if not report.status:
                raise Ignore(f"A delivery report that changes nothing: {report.reason}"[:500])
            if (
                report.reader
                and not Message.objects.filter(
                    provider_id=report.original_message_id, identity__address=report.reader
                ).exists()
            ):
                # Someone copied read it: the customer may not have (or got a bounce).
                raise Ignore(f"A read receipt from {report.reader}, not the customer.")
            # Only people copied missed it: the customer has the answer, which stays sent (and
            # the conversation answered); the message names who did not get it. Any address
            # that is not one of them (a forwarding target, an IDN spelt in ASCII) fails it.
            copied = set(
                Message.objects.filter(provider_id=report.original_message_id)
                .exclude(conversation__participants__address=None)
                .values_list("conversation__participants__address", flat=True)
            )
            copies_missed = (
                report.failed_to if report.failed_to and copied.issuperset(report.failed_to) else ()
            )
            return [
                StatusUpdate(
                    channel=Channel.EMAIL,
                    provider_id=report.original_message_id,
                    status=report.status,
                    reason=f"Bounced: {report.reason}"[:1000] if report.status == "failed" else "",
                    copies_missed=copies_missed,
                )
            ]

        automated, auto_reply = parsed.automated, parsed.auto_reply
        if loop_marker(event.inbox) in parsed.loop_markers:
            automated, auto_reply = "X-Loop: our own marker", True
        metadata = {"message_id": parsed.message_id, "to": [a for _, a in parsed.to]}
        name, sender, check = parsed.from_name, parsed.from_address, ""
        if (
            parsed.reply_to
            and _on_behalf(parsed.from_name, parsed.from_address)
            and not ours(parsed.reply_to[1], our_addresses())
        ):
            # A shop's contact form writes From itself and the visitor in Reply-To; a group
            # that rewrites From ("Ana via Purchasing") keeps the author there. Reply-To is
            # anyone's to write: a new conversation asks agents to check.
            (name, sender), metadata["sent_by"] = parsed.reply_to, parsed.from_address
            check = (
                f"Sent by {parsed.from_address} for {sender}, the address in its Reply-To, "
                "which anyone can write: check before sharing anything about the account."
            )
            if automated.startswith("automated sender"):  # the form's no-reply@ wrote for them
                automated, auto_reply = "", False
        conversation, answered = self.thread(parsed)
        forwarded = conversation is None and not parsed.forged and _agent_forward(parsed)
        if forwarded:
            # An agent passing on what a customer wrote to them directly: the conversation is
            # the customer's, replies go to them, and the agent's colleagues copied are not.
            (name, sender), metadata["forwarded_by"] = forwarded, parsed.from_address
        # Those copied join the thread, unless it was found by the number in the subject
        # alone (anyone can write a From and a "[#12]", and would then be copied on every
        # reply to #12) or the sender's domain disowns the mail. Nor does a mailing list: our
        # replies would go to all its readers. (The sender and our own addresses never join:
        # see conversations.services._participants_add.)
        cc = (
            tuple(pair for pair in parsed.cc + parsed.to if pair[1] not in parsed.lists)
            if (answered or conversation is None) and not (parsed.forged or forwarded)
            else ()
        )
        if conversation is None and not check:
            check = _copies_strangers(sender, cc)
        if automated:
            metadata["automated"] = automated
        if parsed.skipped_attachments:
            metadata["skipped_attachments"] = parsed.skipped_attachments
        return [
            InboundMessage(
                channel=Channel.EMAIL,
                address=sender,
                name=name,
                check=check,
                forged=parsed.forged,
                asks_nothing=auto_reply,
                subject=parsed.subject,
                text=parsed.text or "(no text)",
                quoted=parsed.quoted,
                html=parsed.html,
                provider_id=provider_id,
                language=parsed.language,
                conversation=conversation,
                force_new_conversation=conversation is None,
                answers=tuple(parsed.references[:100]),
                attachments=tuple(parsed.attachments),
                cc=cc,
                metadata=metadata,
            )
        ]

    def thread(self, parsed: ParsedEmail) -> tuple[Conversation | None, bool]:
        """The conversation this mail continues, by our reply token, then by the Message-IDs it
        answers, then by "[#n]" in the subject when From is on that conversation; and
        whether it answers a mail of ours (the first two). Those are checked against the sender
        again by message_receive."""
        for address in parsed.recipients:
            local = address.partition("@")[0]
            if "+" in local:
                token = local.partition("+")[2]
                found = Conversation.objects.filter(reply_token=token).first()
                if found:
                    return found, True
        if parsed.references:
            found = (
                Message.objects.filter(
                    channel=Channel.EMAIL, provider_id__in=parsed.references[:100]
                )
                .order_by("-id")
                .select_related("conversation")
                .first()
            )
            if found:
                return found.conversation, True
        number = SUBJECT_NUMBER.search(parsed.subject)
        if number and (pk := id_given(number.group(1))) is not None:
            conversation = Conversation.objects.filter(pk=pk).first()
            identity = Identity.objects.filter(
                kind=Channel.EMAIL, address=parsed.from_address
            ).first()
            if conversation and identity and conversation_accepts_sender(conversation, identity):
                return conversation, False
        return None, False

    # --- Outbound ---------------------------------------------------------------------------

    def new_provider_id(self, message):
        return make_msgid(domain=_domain(message.inbox)).strip("<>")

    def send(self, message):
        email = self.build(message)
        try:
            email.send(fail_silently=False)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = {code for code, _ in exc.recipients.values()}
            detail = "; ".join(
                f"{addr}: {code} {_text(text)}" for addr, (code, text) in exc.recipients.items()
            )
            raise (PermanentError if all(c >= 500 for c in codes) else TransientError)(
                f"Recipient refused: {detail}"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            error = PermanentError if exc.smtp_code >= 500 else TransientError
            raise error(f"SMTP server answered {exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"Could not reach the SMTP server: {exc}") from exc
        except BadHeaderError as exc:  # the same mail would be refused on every try
            raise PermanentError(f"The mail could not be written: {exc}") from exc
        return SendResult(provider_id=message.provider_id)

    def build(self, message: Message) -> EmailMultiAlternatives:
        conversation = message.conversation
        inbox = message.inbox
        sender = inbox.address or bare_address(settings.DEFAULT_FROM_EMAIL)
        display = f"{message.author.name} ({inbox.name})" if message.author else inbox.name
        # Message-IDs: a mail that came under a reused one is stored under "<id> <digest>".
        thread_ids = [
            provider_id.split(" ", 1)[0]
            for provider_id in conversation.messages.filter(channel=Channel.EMAIL)
            .exclude(provider_id="")
            .exclude(pk=message.pk)
            .order_by("id")
            .values_list("provider_id", flat=True)
        ]
        last_inbound = (
            conversation.messages.filter(channel=Channel.EMAIL, direction=Message.Direction.INBOUND)
            .exclude(provider_id="")
            .order_by("-id")
            .values_list("provider_id", flat=True)
            .first()
        )
        last_inbound = last_inbound and last_inbound.split(" ", 1)[0]
        headers = {
            "Message-ID": f"<{message.provider_id}>",
            "Reply-To": reply_address(conversation, inbox),
            "X-Loop": loop_marker(inbox),
        }
        # RFC 3834: other robots must not answer it. Not a chat follow-up: that carries what
        # agents wrote, and a customer's mail rules may set aside what says auto-replied.
        automatic = message.metadata.get("automatic")
        if automatic not in (None, "", "follow_up"):
            # A survey answers no mail of theirs: generated, not replied (RFC 3834, 5).
            replied = automatic != "satisfaction"
            headers["Auto-Submitted"] = "auto-replied" if replied else "auto-generated"
        if last_inbound or thread_ids:
            headers["In-Reply-To"] = f"<{last_inbound or thread_ids[-1]}>"
            # RFC 5322 asks for the whole chain; keep the first and the latest few.
            chain = thread_ids[:1] + thread_ids[-19:] if len(thread_ids) > 20 else thread_ids
            headers["References"] = " ".join(f"<{i}>" for i in dict.fromkeys(chain))
        to = message.identity.address
        own = our_addresses() | {sender}
        copied = conversation.participants.filter(kind=Channel.EMAIL).values_list(
            "address", flat=True
        )
        if message.metadata.get("follow_up_of") or message.author_id is None:
            # What was said in a chat goes to whoever chatted, and a robot's answer (an
            # automatic reply, an automation's) to the customer only, not to those copied on
            # the conversation's mail: a mail from anyone could copy anyone, and we would pass
            # their words on (spam, phishing).
            copied = []
        cc = {address for address in copied if not ours(address, own) and _deliverable(address)}
        cc = sorted(cc - {to})
        # Addresses in the text are links in the HTML part (a chat's "continue" link, say).
        text = message.text
        html = message.html or linebreaks(urlize(text, autoescape=True))
        # An agent's reply ends with the inbox's signature, after the "-- " line mail readers
        # (and our own parser, on the way back) know; automatic messages go without.
        signature = inbox.signature_for(message.author.name) if message.author else ""
        if signature:
            text = f"{text}\n\n-- \n{signature}"
            lines = "<br>".join(escape(line) for line in signature.splitlines())
            html += f"<p>-- <br>{lines}</p>"
        email = EmailMultiAlternatives(
            subject=thread_subject(conversation),
            body=text,
            from_email=format_address(display, sender),
            to=[to],
            cc=cc,
            headers=headers,
            connection=self.connection(inbox),
        )
        email.attach_alternative(html, "text/html")
        for attachment in message.attachments.all():
            with attachment.file.open("rb") as handle:
                email.attach(attachment.filename, handle.read(), attachment.content_type)
        return email

    @staticmethod
    def connection(inbox):
        config = inbox.settings or {}
        if not config.get("smtp_host"):
            return get_connection(fail_silently=False)
        return get_connection(
            "django.core.mail.backends.smtp.EmailBackend",
            fail_silently=False,
            host=config["smtp_host"],
            port=int(config.get("smtp_port", 587)),
            username=config.get("smtp_username", ""),
            password=(inbox.credentials or {}).get("smtp_password", ""),
            use_tls=bool(config.get("smtp_use_tls", False)),
            use_ssl=bool(config.get("smtp_use_ssl", False)),
            timeout=int(config.get("smtp_timeout", 30)),
        )


# From addresses that send for someone else: contact forms, shops, website robots.
ON_BEHALF = re.compile(
    r"(no-?reply|do-?not-?reply|mailer|wordpress|forms?\b|form-|notifications?|notify|"
    r"webmaster|website)",
    re.I,
)


def _agent_forward(parsed: ParsedEmail) -> tuple[str, str] | None:
    """(name, address) of the customer whose mail an active agent forwarded to us, or None:
    the mail is not from an agent, forwards nothing, or what it forwards is from one of us."""
    agents = get_user_model().objects.filter(is_active=True)
    if not agents.filter(email=parsed.from_address).exists():
        return None
    # In the new text: a forward is kept there whole; one deep in quoted history is not this
    # mail's.
    found = forwarded_sender(parsed.text, forward=bool(FORWARD_SUBJECT.match(parsed.subject)))
    if found is None or ours(found[1], our_addresses()) or agents.filter(email=found[1]).exists():
        return None
    return found


def _on_behalf(name: str, address: str) -> bool:
    """Whether From is a robot writing for the person in Reply-To (a contact form), or a
    group that rewrote From for DMARC ("'Ana Costa' via Purchasing"). Otherwise From is the
    person who wrote, whatever Reply-To says, and stays the customer."""
    return bool(ON_BEHALF.search(address.partition("@")[0])) or " via " in name
