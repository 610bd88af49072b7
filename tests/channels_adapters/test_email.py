import base64
import binascii
import hashlib
import io
import quopri
import re
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from channels_adapters.delivery import inbound_event_process, message_deliver
from channels_adapters.email.parsing import (
    NotAnEmail,
    forwarded_sender,
    html_to_text,
    parse_email,
    read_envelope,
    split_reply,
)
from channels_adapters.models import InboundEvent
from conversations import services
from conversations.models import (
    Channel,
    Conversation,
    Customer,
    Identity,
    Inbox,
    Message,
    Notification,
)
from tests.conftest import ROOT, receive, subprocess_env

FIXTURES = ROOT / "tests" / "fixtures" / "email"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def pipe(inbox, raw: bytes) -> str:
    """Feed a message to `manage.py ingest_email` as an MTA would; returns what it said."""
    import sys

    err, stdin = io.StringIO(), sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(raw))
    try:
        call_command("ingest_email", "--inbox", inbox.address, stderr=err)
    finally:
        sys.stdin = stdin
    return err.getvalue()


def post_mime(client, inbox, raw: bytes, token=None):
    return client.post(
        f"/channels/email/{inbox.pk}/mime",
        data=raw,
        content_type="message/rfc822",
        HTTP_AUTHORIZATION=f"Bearer {token or inbox.secret}",
    )


def customer_message(
    frm="maria@example.com", subject="Help", body="Hello", params=None, **headers
) -> EmailMessage:
    """A customer's mail to support, to add parts to; `params`: its text's Content-Type
    parameters (format=flowed...)."""
    mail = EmailMessage()
    mail["From"] = frm
    mail["To"] = headers.pop("to", "support@acme.example")
    mail["Subject"] = subject
    mail["Message-ID"] = headers.pop("message_id", make_msgid(domain="example.com"))
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(body, params=params)
    return mail


def customer_mail(frm="maria@example.com", subject="Help", body="Hello", **headers) -> bytes:
    return customer_message(frm, subject, body, **headers).as_bytes()


def reply_to(sent, frm="maria@example.com", body="Thanks!", **overrides) -> bytes:
    """What a mail program sends when the customer answers `sent` (a received EmailMessage)."""
    headers = {
        "to": sent["Reply-To"],
        "In_Reply_To": sent["Message-ID"],
        "References": sent["Message-ID"],
    }
    headers.update(overrides)
    return customer_mail(frm=frm, subject=f"Re: {sent['Subject']}", body=body, **headers)


def winmail_dat(*files, props=None) -> bytes:
    """A TNEF stream as Outlook writes one ([MS-OXTNEF] 2.1.3): each file is (8.3 name, long
    name or "", MIME type or "", content or None); `props` replaces each file's MAPI property
    list."""
    import struct

    def attribute(level, attribute_id, data):
        checksum = sum(data) & 0xFFFF
        return (
            struct.pack("<BII", level, attribute_id, len(data)) + data + struct.pack("<H", checksum)
        )

    def text(prop_type, prop_id, value):
        wide = prop_type == 0x001F
        raw = value.encode("utf-16-le" if wide else "cp1252") + b"\x00" * (2 if wide else 1)
        padded = raw + b"\x00" * (-len(raw) % 4)
        return struct.pack("<HHII", prop_type, prop_id, 1, len(raw)) + padded

    out = struct.pack("<IH", 0x223E9F78, 0x0001)
    out += attribute(1, 0x00089006, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += attribute(1, 0x00069007, struct.pack("<II", 1252, 0))  # attOemCodepage
    for short, long, mime, content in files:
        out += attribute(2, 0x00069002, struct.pack("<HIIIH", 1, 0xFFFFFFFF, 0, 0, 0))
        out += attribute(2, 0x00018010, short.encode("cp1252") + b"\x00")  # attAttachTitle
        if content is not None:  # an attached mail has none: it is in its MAPI properties
            out += attribute(2, 0x0006800F, content)  # attAttachData
        listed = [text(0x001F, 0x3707, long)] if long else []
        listed += [text(0x001E, 0x370E, mime)] if mime else []
        mapi = struct.pack("<I", len(listed)) + b"".join(listed)
        out += attribute(2, 0x00069005, props if props is not None else mapi)  # attAttachment
    return out


def only_message(**filters) -> Message:
    return Message.objects.get(direction="inbound", **filters)


class TestParsing:
    def test_a_mislabelled_windows_1252_body_reads_correctly(self):
        parsed = parse_email(fixture("cp1252_labelled_utf8.eml"))
        assert "120 €" in parsed.text and "vérifier" in parsed.text and "«Merci»" in parsed.text

    def test_iso_2022_jp_headers_and_body_decode(self):
        parsed = parse_email(fixture("iso2022jp.eml"))
        assert parsed.from_name == "山田太郎"
        assert parsed.subject == "注文について"
        assert "注文番号 10422 がまだ届いていません。" in parsed.text

    def test_a_forward_that_says_nothing_shows_the_forwarded_mails_text(self, email_inbox):
        raw = fixture("forwarded_as_attachment.eml").replace(
            b"Our customer's mail is attached: order 20460.", b""
        )
        pipe(email_inbox, raw)
        message = only_message()
        assert message.text.startswith("---------- Forwarded message ---------\n")
        assert "From: Kim Park <kim@home.example>\nSubject: Wrong colour" in message.text
        assert "I ordered blue and got green." in message.text
        assert [a.filename for a in message.attachments.all()] == ["Wrong colour.eml"]

    def test_a_big_file_in_a_forward_of_a_forward_is_kept(self, email_inbox):
        from email.message import EmailMessage

        def mail(frm, subject, text, attached, **headers):
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = (
                frm,
                "support@acme.example",
                subject,
            )
            message.set_content(text)
            if isinstance(attached, EmailMessage):
                message.add_attachment(attached)  # message/rfc822
            else:
                message.add_attachment(
                    attached, maintype="application", subtype="pdf", filename="contract.pdf"
                )
            return message

        pdf = b"%PDF-1.4\n" + bytes(700_000)  # set aside before parsing (over 512 kB)
        signed = mail("kim@home.example", "Contract", "Signed.", pdf)
        forwarded = mail("tom@reseller.example", "Fwd: Contract", "See below.", signed)
        pipe(
            email_inbox,
            mail("maria@example.com", "Fwd: Fwd: Contract", "FYI", forwarded).as_bytes(),
        )
        files = {a.filename: a.file.size for a in only_message().attachments.all()}
        assert files["contract.pdf"] == len(pdf)

    def test_names_and_text_in_charsets_the_parser_gets_wrong_still_reach_the_agents(
        self, email_inbox
    ):
        """An unknown-8bit name, a UTF-8 character split over two encoded words, Thai
        Outlook's windows-874 and Outlook's Latin-1 that is windows-1252: the names kept
        undecodable bytes, which no database stores, and the mail never reached an agent."""
        pipe(email_inbox, fixture("broken_charsets.eml"))
        message = only_message()
        assert message.identity.customer.name == "José García"
        assert message.conversation.subject == "สอบถามใบแจ้งหนี้"
        assert message.text == (
            "Hello, you charged me €49.90 twice – that’s wrong. Please refund “one” of them…"
        )
        [copied] = message.conversation.participants.all()
        assert (copied.display_name, copied.address) == ("João Alves", "joao@pt.example")

    def test_raw_8_bit_headers_read_in_the_bodys_charset(self):
        # An old Russian mailer writes its headers in KOI8-R, unencoded, as its body.
        parsed = parse_email(fixture("koi8r_raw_headers.eml"))
        assert (parsed.from_name, parsed.subject) == ("Ольга Смирнова", "Заказ 30211 не пришёл")
        assert parsed.text == "Здравствуйте, заказ 30211 так и не пришёл."

    def test_text_between_files_and_files_without_a_name_are_kept(self, email_inbox):
        # Apple Mail puts the text around the photo, in two parts; a scanner names no file.
        pipe(email_inbox, fixture("apple_text_photo_text.eml"))
        message = only_message()
        assert message.text == (
            "This is how the lamp arrived:\n\n"
            "The base is cracked too. Order 20417, please send a new one."
        )
        files = [(a.filename, a.content_type) for a in message.attachments.order_by("id")]
        assert files == [("lamp.png", "image/png"), ("attachment.pdf", "application/pdf")]

    def test_apple_mails_rich_text_around_a_photo_is_read_whole(self):
        from email.message import EmailMessage

        def rich(text):  # a text and its HTML, as alternatives
            part = EmailMessage()
            part.set_content(text)
            part.add_alternative(f"<p>{text}</p>", subtype="html")
            return part

        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = "rosa@mac.example", "support@acme.example", "x"
        mail.make_mixed()
        photo = EmailMessage()
        photo.set_content(
            b"\x89PNG\r\n\x1a\n", maintype="image", subtype="png", disposition="inline"
        )
        for part in (rich("The lamp arrived like this:"), photo, rich("Order 20417.")):
            mail.attach(part)
        parsed = parse_email(mail.as_bytes())
        assert parsed.text == "The lamp arrived like this:\n\nOrder 20417."

    def test_a_mail_forwarded_as_an_attachment_is_kept_whole(self, email_inbox):
        pipe(email_inbox, fixture("forwarded_as_attachment.eml"))
        message = only_message()
        assert message.text == "Our customer's mail is attached: order 20460."
        assert message.html == ""  # the forwarded mail's HTML is not the sender's own
        [kept] = message.attachments.all()
        assert (kept.filename, kept.content_type) == ("Wrong colour.eml", "message/rfc822")
        inner = parse_email(kept.file.read())
        assert inner.from_address == "kim@home.example"
        assert "IBAN DE02 1203 0000 0000 2020 51" in inner.text

    @pytest.mark.parametrize("encoding", ["8bit", "base64", "quoted-printable"])
    def test_a_forwarded_mail_with_utf8_headers_is_kept_whole(self, email_inbox, encoding):
        """message/global (RFC 6532): a mail whose headers are UTF-8, which may come encoded.
        It is kept as the .eml it was, not read as the forwarder's own text and files."""
        original = (
            "From: Zoë Müller <zoë@beispiel.example>\r\nSubject: Lieferung fehlt\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nBestellung 20461 fehlt.\r\n"
        ).encode()
        encode = {"base64": base64.encodebytes, "quoted-printable": quopri.encodestring}
        mail = (
            b"From: rosa@acme-partner.example\r\nTo: support@acme.example\r\n"
            b"Subject: Fwd: Lieferung fehlt\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: text/plain\r\n\r\nForwarding this one to you.\r\n"
            b"--B\r\nContent-Type: message/global\r\n"
            b"Content-Transfer-Encoding: "
            + encoding.encode()
            + b"\r\n\r\n"
            + encode.get(encoding, bytes)(original)
            + b"\r\n--B--\r\n"
        )
        pipe(email_inbox, mail)
        message = only_message()
        assert message.text == "Forwarding this one to you."
        [kept] = message.attachments.all()
        assert (kept.filename, kept.content_type) == ("Lieferung fehlt.eml", "message/global")
        inner = parse_email(kept.file.read())
        assert (inner.from_name, inner.text) == ("Zoë Müller", "Bestellung 20461 fehlt.")

    def test_an_opaque_signed_smime_mail_is_read_and_an_encrypted_one_kept(self, email_inbox):
        """S/MIME signed "opaque" (Outlook when not told to sign in clear text): the mail is
        inside smime.p7m, which the agent could not open. Encrypted: only our key would."""
        pipe(email_inbox, fixture("smime_opaque_signed.eml"))
        message = only_message()
        assert message.text.startswith("Guten Tag,\n\ndie Rechnung 4711 wurde doppelt abgebucht.")
        files = [(a.filename, a.content_type) for a in message.attachments.all()]
        assert files == [("kontoauszug.pdf", "application/pdf")]

        encrypted = parse_email(fixture("smime_encrypted.eml"))
        assert encrypted.text == ""
        assert [a.filename for a in encrypted.attachments] == ["smime.p7m"]

        # A signed document attached to a mail (an Italian e-invoice) is a file to download.
        invoice = EmailMessage()
        invoice["From"], invoice["To"], invoice["Subject"] = "a@fornitore.example", "b@x.it", "x"
        invoice.set_content("In allegato la fattura.")
        p7m = fixture("smime_opaque_signed.eml").split(b"\r\n\r\n", 1)[1]
        invoice.add_attachment(
            base64.b64decode(p7m),
            maintype="application",
            subtype="pkcs7-mime",
            filename="IT01234567890_FPR01.xml.p7m",
        )
        parsed = parse_email(invoice.as_bytes())
        assert parsed.text == "In allegato la fattura."
        assert [a.filename for a in parsed.attachments] == ["IT01234567890_FPR01.xml.p7m"]

    def test_html_only_mail_gets_text_and_safe_html(self):
        parsed = parse_email(fixture("html_only_inline_image.eml"))
        assert parsed.text.startswith("Hola, adjunto la captura del error:")
        assert "script" not in parsed.html and "onclick" not in parsed.html
        assert "javascript" not in parsed.html
        assert 'src="cid:shot1@example.es"' in parsed.html  # inline image shown in place
        # The tracking pixel is kept but not loaded.
        assert 'data-src="https://tracker.example.com/open.gif?u=123"' in parsed.html
        assert ' src="https://tracker' not in parsed.html
        [image] = parsed.attachments
        assert (image.content_id, image.content_type) == ("shot1@example.es", "image/png")

    def test_an_html_only_reply_keeps_links_hides_the_hidden_and_folds_the_quote(self):
        parsed = parse_email(fixture("gmail_html_only_reply.eml"))
        assert parsed.text == (
            "Thanks, it works now! Here is the video you asked for: "
            "grinder.mp4 <https://videos.example.org/grinder.mp4>\n\nOrder  7781"
        )
        assert parsed.quoted.startswith("On Mon, 30 Nov 2026 at 10:00, Acme Support")
        assert "> Please send us a video of the noise." in parsed.quoted
        assert "Preview" not in parsed.text + parsed.quoted

    @pytest.mark.parametrize(
        ("html", "text"),
        [
            # What a browser shows when a hidden element is never closed, or closed for it.
            (
                '<p style="display:none">Preview<div>My order never arrived</div>',
                "My order never arrived",
            ),
            ("<head><meta charset=utf-8><title>t</title><body>Body text", "Body text"),
            ("<ul><li hidden>a<li>b</ul>", "- b"),
            ("<p>Hi</p><div><span style=display:none>x</div><p>My order</p>", "Hi\nMy order"),
            ("<div hidden>everything, never closed", "everything, never closed"),  # or nothing
            ('<pre>Traceback:\n  File "x"\n boom</pre>', 'Traceback:\n  File "x"\n boom'),
            (
                '<a href="https://a.example">A<a href="https://b.example">b</a></a>'
                ' and <a href=" HTTPS://C.example ">c',
                "A <https://a.example>b <https://b.example> and c <HTTPS://C.example>",
            ),
            ("<blockquote>" * 50 + "deep", "> " * 5 + "deep"),  # each level would copy each line
        ],
    )
    def test_html_becomes_the_text_a_browser_would_show(self, html, text):
        assert html_to_text(html) == text

    @pytest.mark.parametrize(
        ("headers", "name", "address", "subject"),
        [
            # Folded between two encoded words (Outlook folds a long name so): decoded, and
            # no space inside "Präsentation".
            (
                "From: =?iso-8859-1?Q?J=FCrgen_M=FCller_=7C_M=FCller_?=\r\n"
                " =?iso-8859-1?Q?Logistik_GmbH?= <jm@logistik.example>\r\n"
                "Subject: =?utf-8?Q?Einf=C3=BChrung/Pr=C3=A4senta?=\r\n =?utf-8?Q?tion?= [#12]",
                "Jürgen Müller | Müller Logistik GmbH",
                "jm@logistik.example",
                "Einführung/Präsentation [#12]",
            ),
            # A name written the old way, as a comment.
            ("From: ana.lima@example.com (Ana Lima)", "Ana Lima", "ana.lima@example.com", "x"),
            # A name with no brackets: the word with the @ is the address.
            ("From: Ana Lima ana.lima@example.com", "Ana Lima", "ana.lima@example.com", "x"),
        ],
    )
    def test_senders_and_subjects_as_mail_programs_really_write_them(
        self, headers, name, address, subject
    ):
        subject_line = "" if "Subject:" in headers else "Subject: x\r\n"
        raw = f"{headers}\r\n{subject_line}To: support@acme.example\r\n\r\nHello\r\n"
        parsed = parse_email(raw.encode())
        assert (parsed.from_name, parsed.from_address, parsed.subject) == (name, address, subject)

    @pytest.mark.parametrize(
        "headers",
        [
            # No address in From: no DMARC check could fail it, so Sender or Reply-To would
            # be anyone's to write, and [#n] would thread it into their conversation.
            "From: x\r\nSender: victim@customer.example",
            "From: Ana <>\r\nReply-To: victim@customer.example",
            # A second From, which the receiving server's check did not read.
            "From: [??]\r\nFrom: victim@customer.example",
        ],
    )
    def test_a_sender_from_anywhere_but_the_first_from_is_refused(self, headers):
        raw = f"{headers}\r\nSubject: Re: Order [#12]\r\nTo: support@acme.example\r\n\r\nHi\r\n"
        with pytest.raises(NotAnEmail):
            parse_email(raw.encode())

    def test_recipients_with_unquoted_specials_in_their_names_are_kept(self):
        raw = (
            b"From: ana@example.com\r\nSubject: x\r\n"
            b"To: Max Kohl | [acme] <kohl@acme.example>, Ann <ann@acme.example>\r\n"
            b"Cc: one@acme.example\r\nCc: two@acme.example\r\n\r\nHello\r\n"
        )
        parsed = parse_email(raw)
        assert [address for _, address in parsed.to] == ["kohl@acme.example", "ann@acme.example"]
        assert [address for _, address in parsed.cc] == ["one@acme.example", "two@acme.example"]

    @pytest.mark.parametrize(
        ("parts", "text"),
        [
            # A list's footer, as HTML of its own after a plain mail; and the other way round.
            (
                [("plain", "My order 20470 is late."), ("html", "<p>-- <b>Garden club</b></p>")],
                "My order 20470 is late.\n\n-- Garden club",
            ),
            (
                [("html", "<h1>My order 20470 is late.</h1>"), ("plain", "-- Garden club")],
                "My order 20470 is late.\n\n-- Garden club",
            ),
            # A mailer that sends its text and HTML side by side, not as alternatives: once.
            (
                [("plain", "My order 20470 is late."), ("html", "<p>My order 20470 is late.</p>")],
                "My order 20470 is late.",
            ),
            # Words that were said already are not a copy: an HTML caption stays.
            (
                [("plain", "Two photos: the box, and the label."), ("html", "<p>The box</p>")],
                "Two photos: the box, and the label.\n\nThe box",
            ),
        ],
    )
    def test_html_beside_text_in_a_mixed_mail_is_part_of_the_text(self, parts, text):
        body = "".join(
            f"--B\r\nContent-Type: text/{kind}; charset=utf-8\r\n\r\n{content}\r\n"
            for kind, content in parts
        )
        raw = (
            "From: ana@example.com\r\nTo: support@acme.example\r\nSubject: x\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
            f"{body}--B--\r\n"
        )
        assert parse_email(raw.encode()).text == text

    def test_broken_mime_is_read_for_what_it_says(self):
        head = b"From: ana@example.com\r\nTo: support@acme.example\r\nSubject: x\r\n"
        # A multipart with no boundary: the parser keeps it whole, which is its text.
        no_boundary = head + b"Content-Type: multipart/mixed\r\n\r\nMy order is late.\r\n"
        parsed = parse_email(no_boundary)
        assert (parsed.text, parsed.attachments) == ("My order is late.", [])
        # An unlabelled Latin-1 body with a few accents: not taken for Chinese.
        latin = head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\nS=E9bastien ici\r\n"
        assert parse_email(latin).text == "Sébastien ici"
        # Unlabelled ISO-2022-JP, as older Japanese mailers send it: 7-bit, so "ASCII".
        japanese = head + "\r\nお問い合わせありがとうございます。\r\n".encode("iso-2022-jp")
        assert parse_email(japanese).text == "お問い合わせありがとうございます。"
        # A file named in raw UTF-8; an inline image whose Content-ID has no brackets.
        files = (
            head
            + (
                'MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary="B"\r\n\r\n'
                "--B\r\nContent-Type: text/html\r\n\r\n<img src=cid:shot_1>\r\n"
                '--B\r\nContent-Type: image/png; name="Hofjägerallee Wasserschaden.png"\r\n'
                "Content-ID: shot_1\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n"
                "--B--\r\n"
            ).encode()
        )
        [image] = parse_email(files).attachments
        assert (image.filename, image.content_id) == ("Hofjägerallee Wasserschaden.png", "shot_1")

    def test_a_file_uuencoded_into_the_text_is_an_attachment(self, email_inbox):
        """Older mailers, fax and scanner gateways still put files in the text itself."""
        report = b"order;status\n20481;late\n"
        uuencoded = binascii.b2a_uu(report).decode()
        pipe(
            email_inbox,
            customer_mail(
                body=f"The report you asked for:\n\nbegin 644 orders.csv\n{uuencoded}`\nend\n",
                Content_Type='text/plain; charset="us-ascii"',
            ),
        )
        message = only_message()
        assert message.text == "The report you asked for:"
        [kept] = message.attachments.all()
        assert (kept.filename, kept.content_type) == ("orders.csv", "text/csv")
        assert kept.file.read() == report

    def test_headers_in_raw_utf8_or_8_bit_read_as_written(self):
        # SMTPUTF8 mail (RFC 6532) and many mailers write names and subjects unencoded: they
        # read as U+FFFD, and "chloé@" became another address, so another customer.
        raw = (
            "From: =?utf-8?q?Chlo=C3=A9_Smith?= <chloé.smith@example.com>\r\n"
            "To: support@acme.example\r\nSubject: Café order\r\n"
            "Message-ID: <u8@example.com>\r\n\r\nHi\r\n"
        ).encode()
        parsed = parse_email(raw)
        assert (parsed.from_name, parsed.from_address, parsed.subject) == (
            "Chloé Smith",
            "chloé.smith@example.com",
            "Café order",
        )
        assert read_envelope(raw).from_address == "chloé.smith@example.com"
        older = raw.replace("Café".encode(), "Café".encode("cp1252"))  # 8-bit, not UTF-8
        assert parse_email(older).subject == "Café order"

    def test_a_mail_is_known_by_its_body_however_it_came_and_however_large(self, monkeypatch):
        """The body's digest tells two mails under one Message-ID apart (see ingest), and is
        stored: read a piece at a time (a 25 MB mail was copied twice to take it, four times
        its attachment in memory), it must stay what it was, CRLF or LF, a last newline or not."""
        head = b"From: ana@example.com\r\nMessage-ID: <same@example.com>\r\n\r\n"
        bodies = [b"", b"Hi", b"a\r\nb\r\n\r\n \t", b"\r\n" * 5 + b"x", b"abc\r" * 7 + b"\n"]
        mangled = [b"ab\r\r\nx", b"a\r\r\r\n\r\nb"]  # line ends a program doubled
        monkeypatch.setattr("channels_adapters.email.parsing.DIGEST_CHUNK", 3)  # CRLFs cut
        for body in bodies + mangled:
            expected = hashlib.sha256(body.replace(b"\r\n", b"\n").rstrip()).hexdigest()
            assert read_envelope(head + body).body_digest == expected, body
            if body not in mangled:
                as_piped = (head + body).replace(b"\r\n", b"\n")
                assert read_envelope(as_piped).body_digest == expected, body

    @pytest.mark.parametrize(
        "raw", [b"", b"   \n", fixture("not_email.bin"), b'{"text": "hello"}', b"just some words\n"]
    )
    def test_what_is_not_email_is_refused(self, raw):
        with pytest.raises(NotAnEmail):
            parse_email(raw)

    @pytest.mark.parametrize(
        ("text", "new"),
        [
            (
                "Thanks, it works.\n\nOn Mon, Nov 23, 2026 at 10:00 AM Acme Support\n"
                "<support@acme.example> wrote:\n> Try restarting.\n",
                "Thanks, it works.",
            ),
            (
                "Obrigado, funcionou!\n\nEm seg., 23 de nov. de 2026 às 10:00, Acme Support "
                "<support@acme.example> escreveu:\n> Olá!\n",
                "Obrigado, funcionou!",
            ),
            (
                "Merci beaucoup.\n\nLe lun. 23 nov. 2026 à 10:00, Acme <support@acme.example> a "
                "écrit :\n> Bonjour\n",
                "Merci beaucoup.",
            ),
            (
                "¡Gracias!\n\nDe: Acme Support <support@acme.example>\nEnviado: lunes, 23 de "
                "noviembre de 2026 10:00\nPara: Sofía\nAsunto: RE: pedido\n\nHola",
                "¡Gracias!",
            ),
            (  # Outlook rules its header block off: the rule is not the customer's
                "Danke!\n\n________________________________\nFrom: Acme Support "
                "<support@acme.example>\nSent: Monday, 23 November 2026 10:00\nTo: Kunde\n"
                "Subject: Re: Bestellung\n\nHallo",
                "Danke!",
            ),
            (  # Outlook in Swedish, Polish, Finnish, Japanese (a full-width colon) and Russian
                "Tack!\n\nFrån: Acme Support <support@acme.example>\nSkickat: den 1 december "
                "2026 10:00\nTill: Anna\nÄmne: Re: Order 7781\n\nHej Anna",
                "Tack!",
            ),
            (
                "Dziękuję.\n\nOd: Acme Support <support@acme.example>\nWysłano: wtorek, 1 "
                "grudnia 2026 10:00\nDo: Jan\nTemat: Re: Zamówienie\n\nDzień dobry",
                "Dziękuję.",
            ),
            (
                "Kiitos.\n\nLähettäjä: Acme Support <support@acme.example>\nLähetetty: 1. "
                "joulukuuta 2026 10.00\nVastaanottaja: Matti\nAihe: Re: Tilaus\n\nHei",
                "Kiitos.",
            ),
            (
                "ありがとうございます。\n\n差出人： Acme Support <support@acme.example>\n"
                "送信日時： 2026年12月1日 10:00\n宛先： 山田\n件名： Re: 注文\n\n山田様",
                "ありがとうございます。",
            ),
            (
                "Спасибо.\n\nОт: Acme Support <support@acme.example>\nОтправлено: 1 декабря "
                "2026 г. 10:00\nКому: Иван\nТема: Re: Заказ\n\nИван,",
                "Спасибо.",
            ),
            ("See you.\n-- \nGrace Smith\nProcurement", "See you."),
            ("Done.\n\nEnviado do meu iPhone", "Done."),
            ("Sure.\n\nGet Outlook for Android<https://aka.ms/AAb9ysg>", "Sure."),
            ("> only a quote\n> nothing new", "> only a quote\n> nothing new"),
            (  # a footer below the quote (Google Workspace, mail gateways) hides nothing
                "Fixed, thanks!\n\nOn Tue, Dec 1, 2026, Acme <support@acme.example> wrote:\n"
                "> Please restart it.\n\n-- \nCONFIDENTIAL: for the addressee only.",
                "Fixed, thanks!",
            ),
        ],
    )
    def test_quoted_history_and_signatures_split_off_in_our_languages(self, text, new):
        assert split_reply(text)[0] == new

    def test_only_what_every_reader_hides_is_marked_hidden(self):
        html = (
            '<div style="display:none;max-height:0">Preview text</div>'
            '<a href="https://bank.example/confirm" style="mso-hide:all;display:inline-block">'
            "Confirm your new bank details</a>"  # a button: hidden from desktop Outlook only
            '<p lang="ar" title="Arabic">مرحبا</p>'
        )
        mail = customer_message("ana@example.com", "Is this real?", "See below.")
        mail.add_alternative(html, subtype="html")
        parsed = parse_email(mail.as_bytes())
        assert '<div style="display:none">Preview text</div>' in parsed.html
        assert '<a href="https://bank.example/confirm" rel="noopener noreferrer">' in parsed.html
        assert '<p lang="ar" title="Arabic">' in parsed.html
        assert "Confirm your new bank details" in html_to_text(html)

    def test_format_flowed_paragraphs_read_as_written(self):
        """Thunderbird and Apple Mail wrap a paragraph with a space at each line's end (RFC
        3676); shown as sent, every wrap was a hard break mid-sentence."""
        mail = customer_message(
            "marc@example.fr",
            "Re",
            "L'appareil a été acheté le 3 mars \n2025, il est encore \nsous garantie.\n\n"
            "Le 01/12/2026, Acme a écrit :\n> Pouvez-vous envoyer \n> l'étiquette ?\n",
            params={"format": "flowed"},
        )
        parsed = parse_email(mail.as_bytes())
        assert parsed.text == "L'appareil a été acheté le 3 mars 2025, il est encore sous garantie."
        assert parsed.quoted.endswith("> Pouvez-vous envoyer l'étiquette ?")

    def test_a_flowed_line_does_not_swallow_the_signature(self):
        body = "Thanks for the help, \n-- \nMaria Silva\n"
        mail = customer_message(body=body, params={"format": "flowed"})
        parsed = parse_email(mail.as_bytes())
        assert (parsed.text, parsed.quoted) == ("Thanks for the help,", "-- \nMaria Silva")

    @pytest.mark.parametrize(
        "text",
        [
            "Het pakket is er niet.\n\n________________________________\nVan: Acme "
            "<support@acme.example>\nVerzonden: dinsdag 1 december 2026 09:05\nAan: Sanne\n"
            "CC: Piet\nOnderwerp: Re: Levering [#12]\n\nYour parcel left.",
            "Il pacco non è arrivato.\n\n________________________________\nDa: Acme "
            "<support@acme.example>\nInviato: martedì 1 dicembre 2026 09:05\nA: Giulia\n"
            "Cc: Marco\nOggetto: Re: Consegna [#12]\n\nYour parcel left.",
            # A To: list wrapped over lines pushes Subject down.
            "See my answers.\n\n________________________________\nFrom: Acme "
            "<support@acme.example>\nSent: Tuesday, December 1, 2026 9:05 AM\nTo: John "
            "<john@outlook.com>; Anna Lee\n<anna@corp.example>; Bob Stone\n<bob@corp.example>; "
            "Carla\n<carla@corp.example>; Dave\n<dave@corp.example>\nCc: Frank\n"
            "Subject: Re: Contract [#12]\n\nYour parcel left.",
        ],
        ids=["nl", "it", "wrapped_to"],
    )
    def test_outlooks_header_block_is_history_in_every_language(self, text):
        new, quoted = split_reply(text)
        assert "parcel" not in new and quoted.endswith("Your parcel left.")

    def test_a_calendar_invitation_keeps_what_it_proposes(self):
        mail = customer_message("ana@example.com", "Call", "Can we do a quick call?")
        invite = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nDTSTART:20261203T150000Z\r\n"
        mail.add_alternative(invite + "END:VEVENT\r\nEND:VCALENDAR\r\n", subtype="calendar")
        (ics,) = parse_email(mail.as_bytes()).attachments
        assert (ics.filename, ics.content_type) == ("invite.ics", "text/calendar")
        assert b"DTSTART:20261203T150000Z" in ics.content
        # Gmail attaches it again as a file: one is kept.
        mail.add_attachment(invite.encode(), "application", "ics", filename="invite.ics")
        assert len(parse_email(mail.as_bytes()).attachments) == 1

    @pytest.mark.parametrize(
        "text",
        [
            # A sentence that starts like a phone's signature ("Von meinem Konto ...").
            "Die Ware ist zurück.\nVon meinem Konto wurden trotzdem 89,90 € abgebucht.\nBitte "
            "erstatten Sie den Betrag.\n\nGruß\nKlaus",
            # Lines like a quoted header block, with no subject: a booking, a bank receipt.
            "I need to change my booking:\nFrom: Lisbon\nTo: Berlin\nDate: 14 December\n\nCan I "
            "move it to the 16th?",
            "Fiz a transferência:\nDe: Banco Itaú\nPara: Acme Ltda\nData: 30/11/2026\n\n"
            "Confirmem o pedido 4471.",
            # "--" framing a pasted error code, not a signature.
            "The error code is:\n--\nE42 overheating\n--\nPlease advise, third unit.",
            # A colleague's forward: the message forwarded is what we must read.
            "Can you help him?\n\n---------- Forwarded message ---------\nFrom: Peter Brown "
            "<peter@example.net>\nDate: Mon, Nov 30, 2026\nSubject: Broken handle\nTo: "
            "<sales@acme.example>\n\nThe handle broke. Order 66120.",
            # The same, forwarded from Apple Mail in German, and from Gmail under a signature.
            "Schaut mal.\n\nAnfang der weitergeleiteten Nachricht:\n\nVon: Peter "
            "<peter@example.net>\nBetreff: Griff kaputt\nDatum: 30. November 2026\n"
            "An: sales@acme.example\n\nDer Griff ist kaputt.",
            "Can you help him?\n-- \nAna Lima\nSales\n\n---------- Forwarded message "
            "---------\nFrom: Peter Brown <peter@example.net>\nSubject: Broken handle\n\n"
            "The handle broke.",
            # Under a signature with a long legal notice.
            "Can you help him?\n-- \nAna Lima\n"
            + "This message is confidential.\n" * 20
            + "\n---------- Forwarded message ---------\nFrom: Peter\n\nThe handle broke.",
        ],
    )
    def test_what_only_looks_like_history_or_a_signature_stays(self, text):
        assert split_reply(text) == (text, "")

    @pytest.mark.parametrize(
        ("subject", "forwarded"),
        [
            ("FW: Broken handle", True),
            ("WG: Griff", True),
            ("RE: Broken handle", False),
            ("VS: Broken handle", False),  # a reply, in Finnish
        ],
    )
    def test_outlooks_forward_is_the_message_not_its_history(self, subject, forwarded):
        body = (
            "Please look at this customer's problem.\n\n________________________________\n"
            "From: Peter Brown <peter@example.net>\nSent: Monday, 30 November 2026 10:00\n"
            "To: Sales <sales@acme.example>\nSubject: Broken handle\n\nThe handle broke."
        )
        parsed = parse_email(customer_mail(subject=subject, body=body))
        assert ("The handle broke." in parsed.text) == forwarded
        assert parsed.text.startswith("Please look at this customer's problem.")
        # Thunderbird and Gmail name the forwarded mail in In-Reply-To: still a forward.
        naming = parse_email(customer_mail(subject=subject, body=body, In_Reply_To="<a@b>"))
        assert ("The handle broke." in naming.text) == forwarded

    @pytest.mark.parametrize(
        ("line", "sender"),
        [
            ("From: Brown, Peter <Peter@Example.net>", ("Brown, Peter", "peter@example.net")),
            ('De: "Brown, Peter" <peter@example.net>', ("Brown, Peter", "peter@example.net")),
            ("From: Peter Brown [mailto:peter@example.net]", ("Peter Brown", "peter@example.net")),
            ("Von: *Peter Brown* <mailto:peter@example.net>", ("Peter Brown", "peter@example.net")),
            ("From: peter@example.net", ("", "peter@example.net")),
            ("From: Peter Brown", None),
            ("From: Peter <not an address>", None),
        ],
    )
    def test_a_forward_names_whom_it_forwards(self, line, sender):
        text = f"See below.\n\n---------- Forwarded message ---------\n{line}\nSubject: x\n\nHi"
        assert forwarded_sender(text) == sender
        # Outlook's header block is a forward's only when the subject says so.
        outlook = f"See below.\n\n{line}\nSent: Monday\nSubject: x\n\nHi"
        assert forwarded_sender(outlook, forward=True) == sender
        assert forwarded_sender(outlook) is None

        text = (
            "Thanks, that works.\n\n-- \nAna Lima\nSales\n\nFrom: Acme <support@acme.example>"
            "\nSent: Monday\nTo: Ana\nSubject: Re: Handle\n\nTry this.\n\n---------- "
            "Forwarded message ---------\nFrom: Peter\n\nThe handle broke."
        )
        assert split_reply(text)[0] == "Thanks, that works."


@pytest.mark.django_db
class TestThreading:
    @pytest.mark.parametrize(
        ("subject", "body"),
        [
            (
                "Fwd: Broken handle",
                "Can you take this one?\n\n---------- Forwarded message ---------\nFrom: Peter "
                "Brown <Peter@Example.net>\nDate: Mon, Nov 30, 2026\nSubject: Broken handle\n"
                "To: Bob <bob@example.com>\n\nThe handle broke. Order 66120.",
            ),
            (  # Outlook: only the subject says it is a forward
                "FW: Broken handle",
                "Please look at this.\n\n________________________________\nFrom: Peter Brown "
                "[mailto:peter@example.net]\nSent: Monday, 30 November 2026 10:00\nTo: Bob\n"
                "Subject: Broken handle\n\nThe handle broke. Order 66120.",
            ),
            (  # Apple Mail in German, under Bob's signature
                "WG: Griff kaputt",
                "Schaut mal.\n-- \nBob\nAcme\n\nAnfang der weitergeleiteten Nachricht:\n\n"
                "Von: Peter Brown <peter@example.net>\nBetreff: Griff kaputt\nDatum: 30. "
                "November 2026\nAn: bob@example.com\n\nThe handle broke. Order 66120.",
            ),
        ],
    )
    def test_an_agents_forward_is_the_customers_conversation(
        self, client, email_inbox, bob, smtp_server, subject, body
    ):
        """A customer wrote to Bob directly; Bob forwards it to support. The conversation is
        Peter's: replies go to him, Bob's colleague copied is not on it, and no
        acknowledgement tells Peter of a request he did not send us."""
        from routing.models import AutoReply
        from routing.tasks import auto_reply

        AutoReply.objects.create(
            inbox=email_inbox, kind=AutoReply.Kind.ACKNOWLEDGEMENT, body="We have it: #{number}."
        )
        pipe(
            email_inbox,
            customer_mail(
                frm="Bob <bob@example.com>", subject=subject, body=body, Cc="ana@acme.example"
            ),
        )
        message = only_message()
        conversation = message.conversation
        assert (conversation.customer.name, message.identity.address) == (
            "Peter Brown",
            "peter@example.net",
        )
        assert "The handle broke. Order 66120." in message.text
        assert message.metadata["forwarded_by"] == "bob@example.com"
        assert not conversation.participants.exists()
        assert auto_reply(message.pk, True) is None
        client.force_login(bob)
        assert (
            "forwarded by bob@example.com"
            in client.get(f"/inbox/{conversation.pk}/").content.decode()
        )
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="On it").pk)
        [sent] = smtp_server.messages()
        assert sent["To"] == "peter@example.net"

    @pytest.mark.parametrize(
        ("frm", "forwarded", "dmarc"),
        [
            # A customer forwarding a friend's mail: the conversation is the customer's.
            ("maria@example.com", "Peter Brown <peter@example.net>", ""),
            # Bob forwarding his colleague's or our own mail: nobody else's.
            ("bob@example.com", "Bob <bob@example.com>", ""),
            ("bob@example.com", "Acme <support@acme.example>", ""),
            # Someone writing Bob's address, which his domain disowns.
            ("bob@example.com", "Peter Brown <peter@example.net>", "dmarc=fail (p=reject)"),
        ],
    )
    def test_a_forward_by_anyone_else_stays_with_its_sender(
        self, email_inbox, bob, frm, forwarded, dmarc
    ):
        body = (
            "Look.\n\n---------- Forwarded message ---------\n"
            f"From: {forwarded}\nSubject: Handle\n\nThe handle broke."
        )
        headers = {"Authentication_Results": f"mx.acme.example; {dmarc}"} if dmarc else {}
        pipe(email_inbox, customer_mail(frm=frm, subject="Fwd: Handle", body=body, **headers))
        message = only_message()
        assert message.identity.address == frm
        assert "forwarded_by" not in message.metadata

    def test_a_new_mail_opens_a_conversation_with_its_participants(self, email_inbox):
        pipe(email_inbox, fixture("cc_and_attachment.eml"))
        message = only_message()
        conversation = message.conversation
        assert conversation.subject == "Contract renewal"
        assert conversation.customer.name == "Grace Smith"
        assert message.text.startswith("Hi, please find the signed contract attached.")
        assert message.quoted.startswith("--\nGrace Smith")
        assert [p.address for p in conversation.participants.all()] == ["liam@corp.example"]
        [attachment] = message.attachments.all()
        assert attachment.filename == "contract signed.pdf"
        assert attachment.file.read() == b"%PDF-1.4 fake but harmless pdf body"

    def test_an_inline_picture_shows_in_place_and_nothing_remote_loads(
        self, client, email_inbox, bob
    ):
        pipe(email_inbox, fixture("html_only_inline_image.eml"))
        message = only_message()
        [picture] = message.attachments.all()
        client.force_login(bob)
        page = client.get(f"/inbox/{message.conversation_id}/").content.decode()

        [formatted] = re.findall(r'<details class="formatted">.*?</details>', page, re.S)
        assert "with 1 picture in place" in formatted
        # The picture between the two paragraphs, from our own (access-checked) address.
        assert re.search(
            rf'error:</p>\s*<p><img src="/inbox/attachments/{picture.pk}" alt="captura"></p>',
            formatted,
        )
        assert "tracker.example.com" not in formatted  # the read-tracking pixel: not loaded
        assert "<script" not in formatted and "onclick" not in formatted
        assert "javascript:" not in formatted
        assert '<a href="https://example.es/ayuda" rel="noopener noreferrer">' in formatted

    @pytest.mark.parametrize(
        "results, forged",
        [
            # Our server's verdict comes first; what the sender wrote below it is not believed.
            (["dmarc=fail (p=reject) header.from=example.com", "dmarc=pass"], True),
            (["spf=pass; dkim=pass; dmarc=pass", "dmarc=fail"], False),
            ([], False),
            # The domain's policy: failures are believed where it asks receivers to act.
            (["dmarc=fail (p=QUARANTINE sp=NONE dis=QUARANTINE) header.from=example.com"], True),
            (["spf=fail; dmarc=fail action=oreject header.from=example.com"], True),
            (["dkim=none; dmarc=fail (p=NONE sp=NONE dis=NONE) header.from=example.com"], False),
            (["spf=softfail; dmarc=fail action=none header.from=example.com"], False),
            # A subdomain's own policy counts; and a sender who writes a verdict of their own
            # into the envelope sender the spf result repeats does not silence the real one.
            (["dmarc=fail (p=NONE sp=QUARANTINE dis=QUARANTINE) header.from=example.com"], True),
            # The domain itself in monitoring mode: its subdomains' policy was not applied.
            (["dmarc=fail (p=NONE sp=QUARANTINE dis=NONE) header.from=example.com"], False),
            (
                [
                    "spf=fail (domain of dmarc=fail.p=none@evil.example) smtp.mailfrom="
                    '"x;dmarc=fail p=none"@evil.example; dmarc=fail (p=REJECT dis=NONE) '
                    "header.from=example.com"
                ],
                True,
            ),
            # A seal of the forwarder's own making proves nothing.
            (["dmarc=fail (p=reject dis=none) header.from=example.com; arc=pass (i=1)"], True),
        ],
    )
    def test_a_mail_its_senders_domain_disowns_is_flagged_and_copies_nobody(
        self, email_inbox, results, forged
    ):
        mail = customer_mail(subject="New bank details", Cc="thief@evil.example")
        headers = b"".join(
            f"Authentication-Results: mx.acme.example; {result}\r\n".encode() for result in results
        )
        pipe(email_inbox, headers + mail)
        conversation = Conversation.objects.get()
        flagged = "did not come from example.com (DMARC failed)" in conversation.flag_reason
        assert flagged == forged
        copied = [p.address for p in conversation.participants.all()]
        assert copied == ([] if forged else ["thief@evil.example"])

    def test_addresses_are_normalised(self, email_inbox):
        pipe(email_inbox, fixture("new_thread_fr.eml"))
        message = only_message()
        assert message.identity.address == "camille.dubois@exemple.fr"
        assert message.conversation.customer.language == "fr-FR"

    def test_names_and_subjects_lose_what_would_reorder_them_on_screen(
        self, client, email_inbox, bob
    ):
        """U+202E turns "Maria\u202enimda" into "Mariaadmin" on screen: a sender could pass
        for someone else. Such controls go; an Arabic name and a Persian joiner stay."""
        frm = "Maria \u202enimda\u2066 <maria@example.com>"
        pipe(email_inbox, customer_mail(frm=frm, subject="\u200bRefund \u202eredro"))
        pipe(email_inbox, customer_mail(frm="\u0645\u0647\u200c\u0633\u0627 <mahsa@example.com>"))
        maria, mahsa = (
            only_message(identity__address=a) for a in ("maria@example.com", "mahsa@example.com")
        )
        assert maria.conversation.customer.name == "Maria nimda"
        assert maria.identity.display_name == "Maria nimda"
        assert maria.conversation.subject == "Refund redro"
        assert mahsa.conversation.customer.name == "\u0645\u0647\u200c\u0633\u0627"
        client.force_login(bob)
        page = client.get(f"/inbox/{maria.conversation.pk}/").content.decode()
        assert "\u202e" not in page and "Maria nimda" in page

    def test_a_reply_threads_by_the_reply_token(self, email_inbox, bob, smtp_server):
        pipe(email_inbox, customer_mail(subject="Refund"))
        conversation = Conversation.objects.get()
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Done.").pk)
        [sent] = smtp_server.messages()
        # Only the token is left to thread on: no references, another subject.
        pipe(email_inbox, customer_mail(subject="something else", to=sent["Reply-To"]))
        assert Conversation.objects.count() == 1
        assert conversation.messages.filter(direction="inbound").count() == 2

    def test_a_reply_threads_by_in_reply_to(self, email_inbox, bob, smtp_server):
        pipe(email_inbox, customer_mail(subject="Refund"))
        conversation = Conversation.objects.get()
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Done.").pk)
        [sent] = smtp_server.messages()
        pipe(email_inbox, reply_to(sent, to="support@acme.example"))
        assert Conversation.objects.count() == 1

    def test_a_subject_number_threads_only_for_a_participant(self, email_inbox):
        pipe(email_inbox, customer_mail(subject="Refund"))
        conversation = Conversation.objects.get()
        pipe(email_inbox, customer_mail(subject=f"Again [#{conversation.pk}]"))
        assert Conversation.objects.count() == 1
        pipe(
            email_inbox,
            customer_mail(frm="mallory@evil.example", subject=f"Re: Refund [#{conversation.pk}]"),
        )
        assert Conversation.objects.count() == 2
        assert conversation.messages.count() == 2

    def test_answering_our_reply_address_copies_nobody_on_the_next_reply(
        self, email_inbox, bob, smtp_server
    ):
        # The answer goes To: support+<token>@, our Reply-To: that address became a copied
        # participant (and a customer), and every later reply was copied to our own mailbox.
        pipe(email_inbox, customer_mail(subject="Refund"))
        conversation = Conversation.objects.get()
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Hm?").pk)
        pipe(email_inbox, reply_to(smtp_server.messages()[0], body="Order 7781"))
        assert conversation.messages.count() == 3
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Done").pk)
        assert smtp_server.received[-1].rcpt_tos == ["maria@example.com"]
        assert "Cc" not in smtp_server.messages()[-1]
        assert not conversation.participants.exists()
        assert Customer.objects.count() == 1

    def test_a_reply_to_an_address_we_cannot_deliver_is_refused_with_the_reason(
        self, email_inbox, bob
    ):
        # Django wrote "chloé@" as an encoded word (=?utf-8?...?=@), which no server delivers.
        pipe(email_inbox, customer_mail(frm="chloé@example.com"))
        conversation = Conversation.objects.get()
        with pytest.raises(ValidationError, match="chloé@example.com has letters outside ASCII"):
            services.reply_send(conversation=conversation, author=bob, text="Hello")
        assert not Message.objects.filter(direction="outbound").exists()

    def test_an_address_too_long_in_cc_loses_nothing(self, email_inbox):
        pipe(email_inbox, customer_mail(cc=f"{'x' * 400}@example.com, ana@example.com"))
        conversation = Conversation.objects.get()
        assert conversation.messages.count() == 1  # the mail, not a failed event
        assert [i.address for i in conversation.participants.all()] == ["ana@example.com"]

    @pytest.mark.parametrize(
        ("address", "mine"),
        [
            ("support+tok@acme.example", True),
            ("acme+help+tok@gmail.com", True),  # an inbox address with a tag of its own
            ("acme+helpdesk@gmail.com", False),
            ("support@other.example", False),
        ],
    )
    def test_our_addresses_with_or_without_a_tag_are_ours(self, address, mine):
        own = frozenset({"support@acme.example", "acme+help@gmail.com"})
        assert services.ours(address, own) is mine

    def test_a_subject_number_alone_copies_nobody_new_on_the_replies(
        self, email_inbox, bob, smtp_server
    ):
        # From is not proof of anything: a mail "from" the customer with "[#n]" and someone in
        # Cc would have had every later reply copied to them.
        pipe(email_inbox, customer_mail(subject="Refund", cc="partner@example.com"))
        conversation = Conversation.objects.get()
        pipe(
            email_inbox,
            customer_mail(subject=f"Re: Refund [#{conversation.pk}]", cc="mallory@evil.example"),
        )
        assert conversation.messages.count() == 2
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Ok").pk)
        assert smtp_server.received[0].rcpt_tos == ["maria@example.com", "partner@example.com"]

    def test_a_forged_sender_with_valid_references_opens_a_new_flagged_conversation(
        self, email_inbox, bob, smtp_server
    ):
        pipe(email_inbox, customer_mail(subject="My invoice"))
        conversation = Conversation.objects.get()
        message_deliver(
            services.reply_send(conversation=conversation, author=bob, text="Here it is.").pk
        )
        [sent] = smtp_server.messages()

        pipe(email_inbox, reply_to(sent, frm="mallory@evil.example", body="Send it to me"))

        assert conversation.messages.count() == 2  # nothing was appended
        forged = Conversation.objects.exclude(pk=conversation.pk).get()
        assert forged.customer != conversation.customer
        assert "mallory@evil.example is not part of conversation" in forged.flag_reason

    def test_a_known_customers_new_mail_copying_someone_new_asks_agents_to_check(self, email_inbox):
        """Anyone can write a customer's From and copy themselves: every answer about the
        account then went to them too, and nothing said so."""

        def mail(frm, subject, cc):
            pipe(email_inbox, customer_mail(frm=frm, subject=subject, Cc=cc))
            return Conversation.objects.get(subject=subject).flag_reason

        pipe(email_inbox, customer_mail(frm="ana@customers.example", subject="First"))
        pipe(email_inbox, customer_mail(frm="bia@gmail.com", subject="Hi"))
        # A colleague at her company: nothing to check.
        assert mail("ana@customers.example", "Colleague", "Rui <rui@customers.example>") == ""
        # Someone new elsewhere, or at a public mail provider she happens to share.
        assert mail("ana@customers.example", "Invoices", "Ana <ana.work@attacker.example>") == (
            "Copies ana.work@attacker.example, new to this customer: replies go there too, "
            "and anyone can write a customer's From. Check before sharing anything about the "
            "account, or stop copying them."
        )
        assert "Copies eve@gmail.com, new" in mail("bia@gmail.com", "Address", "eve@gmail.com")
        # Whom an agent kept copying is no longer new.
        assert mail("ana@customers.example", "Again", "ana.work@attacker.example") == ""
        # A newcomer copying anyone has no account to protect yet.
        assert mail("new@home.example", "Hello", "x@y.example") == ""

    def test_a_cc_participant_may_answer_in_the_thread(self, email_inbox, bob, smtp_server):
        pipe(email_inbox, fixture("cc_and_attachment.eml"))
        conversation = Conversation.objects.get()
        message_deliver(
            services.reply_send(conversation=conversation, author=bob, text="Received, thanks.").pk
        )
        [sent] = smtp_server.messages()
        assert sent["Cc"] == "liam@corp.example"
        pipe(email_inbox, reply_to(sent, frm="Liam Brown <liam@corp.example>"))
        assert Conversation.objects.count() == 1
        assert conversation.messages.filter(identity__address="liam@corp.example").exists()

    def test_the_agent_sees_who_is_copied_and_stops_copying_them(
        self, email_inbox, bob, smtp_server, client
    ):
        """Who a reply would be copied to was shown nowhere, and could not be changed: a
        customer who copied the wrong colleague had every answer go to them too."""
        pipe(email_inbox, fixture("cc_and_attachment.eml"))
        conversation = Conversation.objects.get()
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Copied on email replies" in page and "liam@corp.example" in page
        liam = conversation.participants.get()
        client.post(f"/inbox/{conversation.pk}/uncopy", {"identity": liam.pk})
        client.post(f"/inbox/{conversation.pk}/uncopy", {"identity": liam.pk})  # twice: once
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Stop copying" not in page
        assert "No longer copied by Bob: liam@corp.example no longer gets email replies" in page
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Ok").pk)
        [sent] = smtp_server.messages()
        assert sent["Cc"] is None
        # The customer answering all of the older mail copies him again: he stays off.
        pipe(email_inbox, reply_to(sent, frm="grace@corp.example", Cc="liam@corp.example"))
        assert not conversation.participants.exists()
        # His own mail to the thread is no longer taken as part of it.
        pipe(email_inbox, reply_to(sent, frm="Liam Brown <liam@corp.example>"))
        assert Conversation.objects.count() == 2

    def test_the_agent_copies_someone_and_refuses_who_cannot_be(
        self, email_inbox, bob, smtp_server, client
    ):
        pipe(email_inbox, fixture("cc_and_attachment.eml"))
        conversation = Conversation.objects.get()
        liam = conversation.participants.get()
        client.force_login(bob)
        client.post(f"/inbox/{conversation.pk}/uncopy", {"identity": liam.pk})
        # Stopped by mistake: copied again, and a customer's colleague the mail did not copy.
        for address in ("liam@corp.example", " Nora@Corp.example "):
            client.post(f"/inbox/{conversation.pk}/copy", {"address": address})
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Copied by Bob: nora@corp.example gets email replies too" in page
        for address, refusal in [
            ("not an address", "Enter a valid email address."),
            ("support@acme.example", "support@acme.example is one of our own addresses."),
            (conversation.customer.identities.get().address, "the customer&#x27;s: they get"),
            ("zoë@corp.example", "Enter a valid email address."),  # not sent without SMTPUTF8
        ]:
            page = client.post(
                f"/inbox/{conversation.pk}/copy", {"address": address}, follow=True
            ).content.decode()
            assert refusal in page
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Ok").pk)
        [sent] = smtp_server.messages()
        assert sent["Cc"] == "liam@corp.example, nora@corp.example"
        # Copied again by an agent, a reply to all that copies him keeps him on.
        pipe(email_inbox, reply_to(sent, frm="grace@corp.example", Cc="liam@corp.example"))
        assert conversation.participants.filter(address="liam@corp.example").exists()
        pipe(email_inbox, reply_to(sent, frm="Nora <nora@corp.example>", body="Me too"))
        assert conversation.messages.filter(identity__address="nora@corp.example").exists()

    def test_an_automations_reply_copies_nobody(self, email_inbox, smtp_server):
        """An automation (\"opened: reply with the terms\") answered whoever the first mail
        copied too, as the automatic replies did: a way to send strangers our mail."""
        pipe(email_inbox, fixture("cc_and_attachment.eml"))
        conversation = Conversation.objects.get()
        reply = services.reply_send(conversation=conversation, author=None, text="Our terms")
        message_deliver(reply.pk)
        [sent] = smtp_server.messages()
        assert sent["Cc"] is None and len(smtp_server.received[0].rcpt_tos) == 1


@pytest.mark.django_db
class TestLoopsAndBounces:
    def test_an_auto_reply_is_stored_and_marked_automated(self, email_inbox):
        said = pipe(email_inbox, fixture("auto_reply_pt.eml"))
        message = only_message()
        assert message.metadata["automated"] == "Auto-Submitted: auto-replied"
        assert "automated" in said

    def test_an_out_of_office_answer_to_our_reply_reopens_nothing(
        self, email_inbox, bob, smtp_server
    ):
        """Bob answered Maria and resolved the conversation; her mail program answers that
        she is away. It joins the timeline, and asks nothing of anyone."""
        pipe(email_inbox, customer_mail())
        conversation = Conversation.objects.get()
        services.conversation_assign(conversation=conversation, assignee=bob)
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Done").pk)
        services.conversation_set_status(conversation=conversation, status="resolved", actor=bob)
        [sent] = smtp_server.messages()
        pipe(
            email_inbox,
            reply_to(sent, body="I am away until Monday.", Auto_Submitted="auto-replied"),
        )
        conversation.refresh_from_db()
        assert conversation.messages.filter(text__startswith="I am away").exists()
        assert (conversation.status, conversation.waiting_since) == ("resolved", None)
        assert not conversation.events.filter(kind="reopened").exists()
        assert not Notification.objects.filter(recipient=bob, kind="customer_replied").exists()
        # Maria herself writing does reopen it.
        pipe(email_inbox, reply_to(sent, body="Actually, one more thing."))
        conversation.refresh_from_db()
        assert conversation.status == "open" and conversation.waiting_since is not None

    def test_a_list_is_not_copied_on_our_replies(self, email_inbox, bob, smtp_server):
        pipe(email_inbox, fixture("list_post.eml"))
        conversation = Conversation.objects.get()
        # Rui, copied by Ana, is; the list's readers are not.
        assert [p.address for p in conversation.participants.all()] == ["rui@members.example"]
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Hi").pk)
        [sent] = smtp_server.messages()
        assert (sent["To"], sent["Cc"]) == ("ana@members.example", "rui@members.example")

    def test_a_list_mail_is_marked_automated(self, email_inbox):
        pipe(email_inbox, fixture("mailing_list.eml"))
        assert only_message().metadata["automated"] == "Precedence: list"

    def test_our_own_message_coming_back_is_ignored(self, email_inbox, bob, smtp_server):
        pipe(email_inbox, customer_mail())
        message_deliver(
            services.reply_send(conversation=Conversation.objects.get(), author=bob, text="Hi").pk
        )
        [sent] = smtp_server.messages()
        said = pipe(email_inbox, sent.as_bytes())
        assert said.startswith("ignored: Our own message came back")
        assert Message.objects.count() == 2

    def test_a_persons_reply_to_changes_neither_the_customer_nor_the_thread(
        self, email_inbox, bob, smtp_server
    ):
        """Alice writes with Reply-To her boss, and later answers us with Reply-To her
        assistant: she is the customer, gets our answer, and stays in one conversation."""
        pipe(email_inbox, customer_mail(frm="alice@corp.example", reply_to="boss@corp.example"))
        conversation = Conversation.objects.get()
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Ok").pk)
        [sent] = smtp_server.messages()
        assert sent["To"] == "alice@corp.example"
        pipe(
            email_inbox,
            reply_to(sent, frm="alice@corp.example", Reply_To="assistant@corp.example"),
        )
        assert Conversation.objects.count() == 1 and conversation.messages.count() == 3

    @pytest.mark.parametrize("frm", ["mallory@evil.example", "noreply@evil.example"])
    def test_a_forged_reply_to_and_number_do_not_write_as_the_customer(self, email_inbox, frm):
        """Nobody checks Reply-To: naming Maria there, with her conversation's number, does
        not put words in her conversation. A robot-like sender opens a flagged one."""
        pipe(email_inbox, customer_mail(subject="Refund"))
        conversation = Conversation.objects.get()
        forged = customer_mail(
            frm=frm,
            subject=f"Re: Refund [#{conversation.pk}]",
            reply_to="maria@example.com",
            body="Send the refund to IBAN XX00 EVIL",
        )
        pipe(email_inbox, forged)
        assert not conversation.messages.filter(text__contains="EVIL").exists()
        other = Conversation.objects.exclude(pk=conversation.pk).get()
        assert other.customer_id != conversation.customer_id or other.flag_reason

    def test_a_list_post_is_from_its_author_not_the_list(self, email_inbox):
        list_post = customer_mail(
            frm="Alice <alice@example.org>",
            reply_to="users@lists.example.org",
            List_Id="<users.lists.example.org>",
        )
        pipe(email_inbox, list_post)
        assert only_message().identity.address == "alice@example.org"

    def test_a_customer_writing_through_a_group_reopens_and_is_heard(
        self, email_inbox, bob, smtp_server
    ):
        """A Google Group rewrites From ("Ana via Purchasing") and keeps Ana in Reply-To:
        list mail, but a person wrote it."""
        group = {
            "frm": "'Ana Costa' via Purchasing <purchasing@costa.example>",
            "Reply_To": "Ana Costa <ana@costa.example>",
            "Precedence": "list",
            "List_Id": "<purchasing.costa.example>",
        }
        pipe(email_inbox, customer_mail(subject="VAT", **group))
        conversation = Conversation.objects.get(customer__name="Ana Costa")
        services.conversation_assign(conversation=conversation, assignee=bob)
        message_deliver(services.reply_send(conversation=conversation, author=bob, text="Ok").pk)
        services.conversation_set_status(conversation=conversation, status="resolved", actor=bob)
        [sent] = smtp_server.messages()
        assert sent["To"] == "ana@costa.example"
        pipe(email_inbox, reply_to(sent, body="The VAT number is still wrong.", **group))
        conversation.refresh_from_db()
        assert conversation.status == "open"
        assert Notification.objects.filter(recipient=bob, kind="customer_replied").exists()

    def test_a_reply_goes_from_the_conversations_own_address(
        self, email_inbox, billing, bob, smtp_server
    ):
        """Maria wrote to billing@ about something else: Bob's next reply in her support@
        conversation went from billing@, with its Reply-To and signature."""
        pipe(email_inbox, customer_mail(subject="Delivery"))
        delivery = Conversation.objects.get()
        other = Inbox.objects.create(
            name="Billing mail", kind=Channel.EMAIL, address="billing@acme.example"
        )
        pipe(other, customer_mail(subject="Invoice", to="billing@acme.example"))
        message_deliver(services.reply_send(conversation=delivery, author=bob, text="Today").pk)
        [sent] = smtp_server.messages()
        assert sent["From"] == '"Bob (Acme Support)" <support@acme.example>'
        assert sent["Reply-To"].startswith("support+")

    def test_one_mail_to_two_of_our_inboxes_is_one_message(self, email_inbox, billing):
        """To support@, Cc billing@: the mail server delivers a copy to each inbox. One
        conversation, one acknowledgement; the customer's follow-up lands there once."""
        other = Inbox.objects.create(
            name="Billing mail",
            kind=Channel.EMAIL,
            address="billing@acme.example",
            default_team=billing,
        )
        first = customer_mail(to="support@acme.example", Cc="billing@acme.example")
        pipe(email_inbox, first)
        assert pipe(other, first).startswith("ignored: The same mail came in through")
        (conversation,) = Conversation.objects.all()
        sent_id = re.search(rb"Message-ID: <([^>]+)>", first).group(1).decode()
        again = customer_mail(
            body="Any news?",
            to="support@acme.example",
            Cc="billing@acme.example",
            In_Reply_To=f"<{sent_id}>",
            References=f"<{sent_id}>",
        )
        pipe(other, again)
        pipe(email_inbox, again)
        assert list(conversation.messages.values_list("text", flat=True)) == ["Hello", "Any news?"]
        assert Conversation.objects.count() == 1
        # A mail without a Message-ID (a script's, an old form's) is known by what its sender
        # wrote, not by the trace headers each delivery added.
        bare = re.sub(rb"Message-ID: [^\r\n]+\r?\n", b"", customer_mail(subject="No id"))
        hop = b"Received: from mx.example.com by mx.acme.example; Tue, 1 Dec 2026 10:00 +0000\r\n"
        for to in (b"support", b"billing"):  # each copy's own last hop, above the shared one
            copy = b"Delivered-To: %s@acme.example\r\nReceived: by %s\r\n" % (to, to) + hop
            said = pipe(email_inbox if to == b"support" else other, copy + bare)
        assert said.startswith("ignored: The same mail came in through")
        assert Conversation.objects.filter(subject="No id").count() == 1
        # The same words sent again the next day (a script's alert) are another mail.
        pipe(email_inbox, hop.replace(b"Tue, 1", b"Wed, 2") + bare)
        assert Conversation.objects.filter(subject="No id").count() == 2
        # And "Thanks!" to each of two reply addresses is two mails (the README's own example
        # with no id and no Date: the second was dropped as the first again).
        thanks = re.sub(rb"Message-ID: [^\r\n]+\r?\n", b"", customer_mail(subject="Thanks"))
        pipe(email_inbox, thanks)
        other_thread = thanks.replace(b"To: support@acme.example", b"To: support+x@acme.example")
        assert pipe(email_inbox, other_thread).startswith("stored")
        # A contact form's mail, whose customer is in Reply-To, is one message too; another
        # mail under a Message-ID the other inbox has is not taken for it.
        form = customer_mail(
            frm="Shop <mailer@shop.example>",
            reply_to="Olivia <olivia@example.org>",
            to="support@acme.example",
            Cc="billing@acme.example",
        )
        pipe(email_inbox, form)
        assert pipe(other, form).startswith("ignored: The same mail came in through")
        reused = re.search(rb"Message-ID: (<[^>]+>)", form).group(1).decode()
        stranger = customer_mail(frm="jo@example.com", body="Refund", message_id=reused)
        assert not pipe(other, stranger).startswith("ignored")
        assert Conversation.objects.count() == 7  # with the four mails without an id

    def test_a_contact_form_mail_is_from_the_visitor_in_reply_to(
        self, email_inbox, bob, smtp_server
    ):
        """A shop's contact form sends as itself and names the visitor in Reply-To: each
        visitor is their own customer, and answers reach them, not the shop's robot."""
        for visitor in ("Olivia Hart <olivia@example.org>", "Tom Okafor <tom@example.net>"):
            form = customer_mail(
                frm="Shop <mailer@shop.example>", subject="Contact form", reply_to=visitor
            )
            pipe(email_inbox, form)
        olivia = Conversation.objects.get(customer__name="Olivia Hart")
        assert Conversation.objects.filter(customer__name="Tom Okafor").exists()
        # Anyone can type an address into a form: agents are asked to check.
        assert olivia.flag_reason.startswith("Sent by mailer@shop.example for olivia@")
        assert only_message(conversation=olivia).metadata["sent_by"] == "mailer@shop.example"
        message_deliver(services.reply_send(conversation=olivia, author=bob, text="Hi").pk)
        [sent] = smtp_server.messages()
        assert sent["To"] == "olivia@example.org"
        # A Reply-To naming one of our own addresses changes nothing.
        pipe(email_inbox, customer_mail(frm="ana@example.com", reply_to="support@acme.example"))
        assert Identity.objects.filter(address="ana@example.com").exists()
        assert not Identity.objects.filter(address="support@acme.example").exists()

    @pytest.mark.parametrize(
        ("name", "why"),
        [
            ("bounce_template.eml", "Bounced: 550 5.1.1 <nobody@customers.example>"),
            # qmail's, in plain text: the copy of our mail below it names it.
            ("bounce_plain_qmail.eml", "Bounced: Sorry, no mailbox here by that name. (#5.1.1)"),
            # It gave up, whatever temporary trouble it quotes.
            ("bounce_plain_gave_up.eml", "Bounced: Remote host said: 451 4.3.0 Temporary"),
            # For mail to an address in UTF-8 (RFC 6533): message/global-*, its status base64.
            ("bounce_smtputf8.eml", "Bounced: 550 5.1.1 <nobody@customers.example>: Empfänger"),
        ],
    )
    def test_a_bounce_fails_the_message_it_concerns_and_opens_nothing(
        self, email_inbox, bob, smtp_server, name, why
    ):
        reply = self.sent_reply(email_inbox, bob)
        # Bob resolved it on sending; the bounce comes an hour later.
        services.conversation_set_status(
            conversation=reply.conversation, status="resolved", actor=bob
        )
        said = pipe(email_inbox, self.report(name, reply))
        assert said == "delivery report applied to the message it concerns\n"

        reply.refresh_from_db()
        assert reply.status == Message.Status.FAILED
        assert reply.failure_reason.startswith(why)
        # No new conversation; the customer did not get the answer, so it is open again.
        assert list(Conversation.objects.values_list("status", flat=True)) == ["open"]

    @pytest.mark.parametrize(
        ("name", "status", "said"),
        [
            # Gmail still trying (Action: delayed, 4.7.0): nothing to retry, nothing failed.
            ("dsn_delayed.eml", "sent", "ignored: A delivery report that changes nothing: 421"),
            # qmail still trying, in plain text.
            ("bounce_plain_delayed.eml", "sent", "ignored: A delivery report that changes"),
            # Thunderbird's read receipt (RFC 8098, "displayed"): read, not bounced.
            ("read_receipt.eml", "read", "delivery report applied to the message it concerns"),
        ],
    )
    def test_a_delay_notice_or_a_read_receipt_fails_nothing(
        self, email_inbox, bob, smtp_server, name, status, said
    ):
        reply = self.sent_reply(email_inbox, bob)
        result = pipe(email_inbox, self.report(name, reply))
        reply.refresh_from_db()
        assert (reply.status, reply.failure_reason) == (status, "")
        assert result.startswith(said)
        assert Conversation.objects.count() == 1 and Message.objects.count() == 2

    def test_a_read_receipt_from_someone_copied_hides_no_bounce(
        self, email_inbox, bob, smtp_server
    ):
        """Our reply went to Maria, Liam copied. Liam's read receipt says nothing of Maria,
        whose mailbox bounces it: the agent must learn she did not get it."""
        pipe(email_inbox, customer_mail(frm="nobody@customers.example", Cc="liam@corp.example"))
        reply = services.reply_send(conversation=Conversation.objects.get(), author=bob, text="Hi")
        message_deliver(reply.pk)
        reply.refresh_from_db()
        receipt = self.report("read_receipt.eml", reply).replace(
            b"Final-Recipient: rfc822;nobody@customers.example",
            b"Final-Recipient: rfc822;liam@corp.example",
        )
        assert pipe(email_inbox, receipt).startswith("ignored: A read receipt from liam@")
        pipe(email_inbox, self.report("bounce_template.eml", reply))
        reply.refresh_from_db()
        assert reply.status == Message.Status.FAILED

    def test_a_bounce_for_someone_copied_fails_nothing_and_names_them(
        self, email_inbox, bob, smtp_server, client
    ):
        """Liam's old address bounced our reply to Maria, who got it: the whole reply showed
        as failed, the conversation as unanswered, and nothing said who missed it."""
        pipe(email_inbox, customer_mail(frm="nobody@customers.example", Cc="liam@corp.example"))
        conversation = Conversation.objects.get()
        reply = services.reply_send(conversation=conversation, author=bob, text="Hi")
        message_deliver(reply.pk)
        reply.refresh_from_db()
        bounce = self.report("bounce_template.eml", reply).replace(
            b"Final-Recipient: rfc822; nobody@customers.example",
            b"Final-Recipient: rfc822 ; liam@corp.example",  # a space RFC 3464 allows
        )
        pipe(email_inbox, bounce)
        reply.refresh_from_db()
        assert (reply.status, reply.failure_reason) == (Message.Status.SENT, "")
        conversation.refresh_from_db()
        assert conversation.waiting_since is None  # answered: Maria has it
        client.force_login(bob)
        page = client.get(f"/inbox/{conversation.pk}/").content.decode()
        assert "Not delivered to liam@corp.example, copied: Bounced: 550 5.1.1" in page
        # One report for both, his block first, with CRLF line ends: hers still fails it.
        both = self.report("bounce_template.eml", reply).replace(
            b"Final-Recipient: rfc822; nobody@customers.example",
            b"Final-Recipient: rfc822 ; liam@corp.example\nAction: failed\n\n"
            b"Final-Recipient: rfc822; nobody@customers.example",
        )
        pipe(email_inbox, both.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        reply.refresh_from_db()
        assert reply.status == Message.Status.FAILED

    def test_a_read_receipt_without_its_report_type_is_still_a_receipt(
        self, email_inbox, bob, smtp_server
    ):
        reply = self.sent_reply(email_inbox, bob)
        receipt = self.report("read_receipt.eml", reply).replace(
            b"report-type=disposition-notification;", b""
        )
        pipe(email_inbox, receipt)
        reply.refresh_from_db()
        assert reply.status == Message.Status.READ

    @staticmethod
    def sent_reply(inbox, agent) -> Message:
        pipe(inbox, customer_mail(frm="nobody@customers.example"))
        reply = services.reply_send(
            conversation=Conversation.objects.get(), author=agent, text="Hello"
        )
        message_deliver(reply.pk)
        reply.refresh_from_db()
        return reply

    @staticmethod
    def report(name: str, reply: Message) -> bytes:
        raw = fixture(name).replace(b"{{ORIGINAL_ID}}", reply.provider_id.encode())
        return raw.replace(b"{{N}}", b"1")


@pytest.mark.django_db
class TestSmtpOut:
    def test_a_reply_reaches_the_smtp_server_with_threading_headers(
        self, email_inbox, bob, smtp_server
    ):
        pipe(email_inbox, fixture("new_thread_fr.eml"))
        conversation = Conversation.objects.get()
        reply = services.reply_send(
            conversation=conversation, author=bob, text="Bonjour Camille,\nC'est réparé."
        )
        assert message_deliver(reply.pk).status == Message.Status.SENT

        [sent] = smtp_server.messages()
        reply.refresh_from_db()
        assert sent["Message-ID"] == f"<{reply.provider_id}>"
        assert sent["In-Reply-To"] == "<CAF3x9-new-thread-fr@mail.exemple.fr>"
        assert sent["References"] == "<CAF3x9-new-thread-fr@mail.exemple.fr>"
        assert sent["Reply-To"] == f"support+{conversation.reply_token}@acme.example"
        # Django folds an encoded subject right after the colon; readers trim that space.
        assert sent["Subject"].strip() == (
            f"Re: Problème de connexion à mon compte [#{conversation.pk}]"
        )
        assert sent["From"] == '"Bob (Acme Support)" <support@acme.example>'
        assert sent["To"] == "camille.dubois@exemple.fr"
        assert sent.get_body(("plain",)).get_content().replace("\r\n", "\n").strip() == (
            "Bonjour Camille,\nC'est réparé."
        )
        assert "<p>Bonjour Camille,<br>C&#x27;est réparé.</p>" in (
            sent.get_body(("html",)).get_content()
        )
        assert smtp_server.received[0].rcpt_tos == ["camille.dubois@exemple.fr"]

    def test_a_subject_with_line_breaks_is_kept_on_one_line_and_replies_go(
        self, api_inbox, email_inbox, bob, smtp_server
    ):
        # Another channel (the API here) brought a subject with a line break: every email
        # reply was refused as a header injection, and retried for hours before failing.
        conversation = receive(
            api_inbox, address="c-1", subject="Order 5\r\nBcc: everyone@example.org"
        ).message.conversation
        assert conversation.subject == "Order 5 Bcc: everyone@example.org"
        email = services.identity_add(
            customer=conversation.customer, kind=Channel.EMAIL, address="cust@example.org"
        )
        reply = services.reply_send(
            conversation=conversation, author=bob, text="Hi", identity=email
        )
        assert message_deliver(reply.pk).status == Message.Status.SENT
        [sent] = smtp_server.messages()
        assert sent["Subject"] == f"Re: Order 5 Bcc: everyone@example.org [#{conversation.pk}]"
        assert smtp_server.received[0].rcpt_tos == ["cust@example.org"]

    def test_an_agents_reply_ends_with_the_inboxs_signature(self, email_inbox, bob, smtp_server):
        email_inbox.signature = "{agent} · {inbox}\n<b>Mon–Fri</b>, {unknown}"
        email_inbox.save()
        pipe(email_inbox, customer_mail())
        conversation = Conversation.objects.get()
        reply = services.reply_send(conversation=conversation, author=bob, text="Fixed.")
        message_deliver(reply.pk)
        [sent] = smtp_server.messages()
        plain = sent.get_body(("plain",)).get_content().replace("\r\n", "\n")
        assert plain.strip() == "Fixed.\n\n-- \nBob · Acme Support\n<b>Mon–Fri</b>, {unknown}"
        html = sent.get_body(("html",)).get_content()
        assert "<p>-- <br>Bob · Acme Support<br>&lt;b&gt;Mon–Fri&lt;/b&gt;, {unknown}</p>" in html
        assert reply.text == "Fixed."  # the timeline shows what the agent wrote

        # An automatic message goes without it.
        services.reply_send(conversation=conversation, author=None, text="We got it.")
        message_deliver(conversation.messages.latest("id").pk)
        plain = smtp_server.messages()[-1].get_body(("plain",)).get_content()
        assert plain.strip() == "We got it."

    def test_a_misspelt_signature_placeholder_is_refused(self, email_inbox):
        for signature, refusal in [
            ("{agnet}, {inbox}", "Unknown placeholder {agnet}; use {agent}, {inbox}."),
            ("{{agent}}", "A placeholder takes one pair of braces: {name}, not {{name}}."),
        ]:
            email_inbox.signature = signature
            with pytest.raises(ValidationError) as refused:
                email_inbox.full_clean()
            assert refused.value.message_dict == {"signature": [refusal]}

    def test_a_451_is_retried_and_then_sent(self, email_inbox, bob, smtp_server):
        pipe(email_inbox, customer_mail())
        smtp_server.answers = ["451 4.3.0 Mailbox busy, try again later"]
        reply = services.reply_send(conversation=Conversation.objects.get(), author=bob, text="Hi")
        outcome = message_deliver(reply.pk)

        reply.refresh_from_db()
        assert outcome.retry_in is not None
        assert reply.status == Message.Status.QUEUED
        assert "451 4.3.0 Mailbox busy" in reply.failure_reason
        assert message_deliver(reply.pk) is None  # too early: still backing off
        with time_machine.travel(timezone.now() + timedelta(seconds=outcome.retry_in + 1)):
            assert message_deliver(reply.pk).status == Message.Status.SENT
        assert len(smtp_server.received) == 1
        assert list(reply.attempts_log.values_list("outcome", flat=True)) == ["retry", "sent"]
        first_id = reply.provider_id
        reply.refresh_from_db()
        assert reply.provider_id == first_id  # the retry kept its Message-ID

    def test_a_550_fails_visibly_with_the_servers_reason(self, email_inbox, bob, smtp_server):
        pipe(email_inbox, customer_mail())
        smtp_server.answers = ["550 5.1.1 No such user here"]
        reply = services.reply_send(conversation=Conversation.objects.get(), author=bob, text="Hi")
        assert message_deliver(reply.pk).status == Message.Status.FAILED
        reply.refresh_from_db()
        assert reply.failure_reason == "SMTP server answered 550 5.1.1 No such user here"

    def test_an_unreachable_server_is_a_temporary_failure(self, email_inbox, bob):
        pipe(email_inbox, customer_mail())
        email_inbox.settings["smtp_port"] = 9  # nothing listens there
        email_inbox.save()
        reply = services.reply_send(conversation=Conversation.objects.get(), author=bob, text="Hi")
        assert message_deliver(reply.pk).status == Message.Status.QUEUED
        reply.refresh_from_db()
        assert reply.failure_reason.startswith("Could not reach the SMTP server")


@pytest.mark.django_db
class TestInboundPaths:
    def test_the_same_mail_by_pipe_and_http_is_one_message(self, client, email_inbox):
        raw = fixture("new_thread_fr.eml")
        pipe(email_inbox, raw)
        response = post_mime(client, email_inbox, raw)
        assert response.status_code == 202
        assert response.json()["duplicate"] is True
        assert "duplicate" in pipe(email_inbox, raw)
        assert Message.objects.count() == 1

    @pytest.mark.parametrize("left", ["contact-form", "a" * 230])  # ids up to 255 characters
    def test_another_mail_under_a_message_id_we_have_is_kept_too(
        self, client, email_inbox, bob, smtp_server, left
    ):
        """Some mailers reuse Message-IDs, and anyone can write one: only the same mail,
        whatever trace headers its path added, is a duplicate."""
        reused = f"<{left}@shop.example>"
        maria = customer_mail(body="My order is late", message_id=reused)
        pipe(email_inbox, maria)
        relayed = b"Received: from relay.example by mx.acme.example; Tue, 1 Dec 2026\r\n" + maria
        assert "duplicate" in pipe(email_inbox, relayed)
        jo = customer_mail(frm="jo@example.com", body="Refund please", message_id=reused)
        assert post_mime(client, email_inbox, jo).json()["duplicate"] is False
        assert post_mime(client, email_inbox, jo).json()["duplicate"] is True
        for event in InboundEvent.objects.filter(status="pending"):
            inbound_event_process(event.pk)
        late, refund = (
            Message.objects.get(text=text) for text in ("My order is late", "Refund please")
        )
        assert late.conversation != refund.conversation
        assert refund.conversation.customer.identities.get().address == "jo@example.com"
        # Answering Jo refers to the Message-ID her mail had.
        reply = services.reply_send(conversation=refund.conversation, author=bob, text="Done")
        message_deliver(reply.pk)
        (sent,) = smtp_server.messages()
        if len(left) < 200:  # a longer one is kept to its first 200 characters
            assert sent["In-Reply-To"] == reused

    def test_the_http_endpoint_refuses_a_wrong_secret_and_non_email(self, client, email_inbox):
        assert post_mime(client, email_inbox, customer_mail(), token="nope").status_code == 403
        response = post_mime(client, email_inbox, fixture("not_email.bin"))
        assert response.status_code == 400
        assert response.json()["error"].startswith("Not an email")
        # A wrong inbox, or one switched off: said in JSON too, as to an API client.
        response = client.post("/channels/email/999999/mime", data=b"x", content_type="text/plain")
        assert response.json() == {"error": "No email inbox has the id 999999."}
        assert response.status_code == 404
        email_inbox.is_active = False
        email_inbox.save()
        response = post_mime(client, email_inbox, customer_mail())
        assert response.status_code == 403
        assert response.json() == {"error": "This inbox is switched off; an admin can turn it on."}
        assert not InboundEvent.objects.exists()

    def test_the_pipe_refuses_unreadable_input_with_a_reason(self, email_inbox):
        with pytest.raises(CommandError, match="unreadable input: the input is empty"):
            pipe(email_inbox, b"")
        with pytest.raises(CommandError, match="no email inbox"):
            call_command("ingest_email", "--inbox", "nobody@nowhere.example")
        # A From of thousands of nested comments overflowed the parser's stack: a traceback.
        nested = customer_mail(frm="x@example.com").replace(
            b"From: x@example.com", b"From: " + b"(" * 30_000 + b"x@example.com"
        )
        with pytest.raises(CommandError, match="unreadable input: no From address"):
            pipe(email_inbox, nested)
        assert not InboundEvent.objects.exists()

    def test_a_header_beyond_any_real_ones_length_is_read_as_far_as_that(self, email_inbox):
        # Half a megabyte of encoded words took the parser a minute (its time grows with the
        # square of the length): what is read of it is cut.
        words = " ".join(["=?utf-8?Q?caf=C3=A9?="] * 25_000)
        raw = customer_mail(subject="x").replace(b"Subject: x", f"Subject: {words}".encode())
        subject = parse_email(raw).subject
        assert subject.startswith("cafécafé") and len(subject) < 20_000
        pipe(email_inbox, raw)
        assert Conversation.objects.get().subject.startswith("cafécafé")

    @pytest.mark.django_db(transaction=True)
    def test_a_mail_piped_without_redis_is_acknowledged_before_the_command_exits(
        self, email_inbox, smtp_server
    ):
        """The README's pipe on a machine without Redis: the command's own process is the only
        one that can run what the mail sets off, so the acknowledgement must go from there."""
        import subprocess
        import sys

        from routing.models import AutoReply

        AutoReply.objects.create(
            inbox=email_inbox, kind=AutoReply.Kind.ACKNOWLEDGEMENT, body="We have it: #{number}."
        )
        piped = subprocess.run(
            [sys.executable, "manage.py", "ingest_email", "--inbox", email_inbox.address],
            input=customer_mail(subject="Where is my order?"),
            capture_output=True,
            cwd=ROOT,
            env=subprocess_env(REDIS_URL="", EMBEDDED_WORKER="false"),
            timeout=60,
        )
        assert piped.returncode == 0, piped.stderr
        conversation = Conversation.objects.get()
        assert f"stored in conversation #{conversation.pk}" in piped.stderr.decode()
        (ack,) = smtp_server.messages()
        assert ack["To"] == "maria@example.com"
        assert f"We have it: #{conversation.pk}." in ack.get_body(("plain",)).get_content()
        reply = conversation.messages.get(direction=Message.Direction.OUTBOUND)
        assert reply.status == Message.Status.SENT

    def test_a_20_mb_attachment_is_stored_whole(self, email_inbox):
        mail = customer_message("a@b.example", "big", "see attached")
        payload = bytes(range(256)) * (20 * 1024 * 1024 // 256)
        mail.add_attachment(
            payload, maintype="application", subtype="octet-stream", filename="dump.bin"
        )
        pipe(email_inbox, mail.as_bytes())
        [attachment] = only_message().attachments.all()
        assert attachment.size == len(payload)
        assert attachment.file.read() == payload

    def test_a_file_over_the_limit_is_named_where_the_agent_reads_the_mail(
        self, email_inbox, client, bob
    ):
        """A 26 MB video was dropped with no word to the agent, who answered as if the
        customer had sent nothing."""
        mail = customer_message("a@b.example", "Broken", "The video shows the defect.")
        mail.add_attachment(
            b"\0" * (26 * 1024 * 1024), "video", "mp4", filename="defect<video>.mp4"
        )
        pipe(email_inbox, mail.as_bytes())
        message = only_message()
        assert not message.attachments.exists()
        client.force_login(bob)
        page = client.get(f"/inbox/{message.conversation_id}/").content.decode()
        assert (
            "Not kept: defect&lt;video&gt;.mp4 (26 MB, over the limit). Ask for it another "
            "way" in page
        )

    def test_outlooks_winmail_dat_arrives_as_the_files_inside_it(self, email_inbox):
        quote, photo = b"%PDF-1.4 the quote", b"\x89PNG\r\n\x1a\n picture"
        mail = customer_message("a@b.example", "Quote", "The quote and a photo, attached.")
        winmail = winmail_dat(
            ("QUOTEM~1.PDF", "Quote März 2026.pdf", "", quote),  # the long name in MAPI
            ("PHOTO.PNG", "", "image/png", photo),  # only the short name, and a MIME type
        )
        mail.add_attachment(winmail, "application", "ms-tnef", filename="winmail.dat")
        pipe(email_inbox, mail.as_bytes())
        message = only_message()
        files = {a.filename: (a.content_type, a.file.read()) for a in message.attachments.all()}
        assert files == {
            "Quote März 2026.pdf": ("application/pdf", quote),
            "PHOTO.PNG": ("image/png", photo),
        }
        assert message.text == "The quote and a photo, attached."

    def test_what_in_a_winmail_dat_is_no_file_keeps_the_winmail_dat_beside_the_files(
        self, email_inbox
    ):
        mail = customer_message("a@b.example", "Fwd", "The quote, and the mail it came with.")
        winmail = winmail_dat(
            ("QUOTE.PDF", "", "Application/PDF\r\nX-Injected: 1", b"%PDF-1.4 q"),
            ("EMPTY.TXT", "", "", b""),  # an empty file is still a file
            ("ORIGINAL", "Original mail", "", None),  # an attached mail
        )
        mail.add_attachment(winmail, "application", "ms-tnef", filename="winmail.dat")
        pipe(email_inbox, mail.as_bytes())
        files = {a.filename: a.content_type for a in only_message().attachments.all()}
        assert files == {
            "QUOTE.PDF": "application/pdf",  # the type its name says, not a broken one
            "EMPTY.TXT": "text/plain",
            "winmail.dat": "application/ms-tnef",  # what was not unpacked is not lost
        }

    @pytest.mark.parametrize(
        "winmail",
        [
            b"not TNEF at all",
            # Counts no file could hold: a property list claiming 4 billion entries, each a
            # list of 4 billion numbers, and then 3,000 empty attributes.
            winmail_dat(("A.TXT", "", "", b"x"), props=b"\xff\xff\xff\xff" + b"\x03\x10\x01\x00")
            + b"\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00" * 3000,
        ],
    )
    def test_a_winmail_dat_that_cannot_be_read_is_kept_as_it_came(self, email_inbox, winmail):
        mail = customer_message("a@b.example", "Odd", "See the attachment.")
        mail.add_attachment(winmail, "application", "ms-tnef", filename="winmail.dat")
        pipe(email_inbox, mail.as_bytes())
        [kept] = only_message().attachments.all()
        assert (kept.filename, kept.file.read()) == ("winmail.dat", winmail)

    def test_a_large_mail_over_http_is_kept_as_a_file_and_processed_by_the_task(
        self, client, email_inbox
    ):
        from channels_adapters.delivery import inbound_event_process

        mail = customer_message("a@b.example", "log", "log attached")
        payload = bytes(range(256)) * 8192  # 2 MB
        mail.add_attachment(payload, maintype="application", subtype="gzip", filename="x.gz")
        raw = mail.as_bytes()

        assert post_mime(client, email_inbox, raw).status_code == 202
        event = InboundEvent.objects.get()
        assert event.payload_file and not event.payload  # not held in the row
        assert event.raw() == raw
        inbound_event_process(event.pk)  # what the worker's task does
        [attachment] = only_message().attachments.all()
        assert attachment.file.read() == payload

    def test_an_agent_can_answer_an_email_customer_on_another_channel(
        self, email_inbox, chat_inbox, bob
    ):
        pipe(email_inbox, customer_mail())
        conversation = Conversation.objects.get()
        visitor = Identity.objects.create(
            customer=conversation.customer, kind=Channel.WEBCHAT, address="visitor-77"
        )
        reply = services.reply_send(
            conversation=conversation, author=bob, text="Hi there", identity=visitor
        )
        assert reply.inbox == chat_inbox
        assert conversation.events.filter(kind="channel").exists()
