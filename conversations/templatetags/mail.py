"""A message's own formatting, for the timeline: the sender's HTML, cleaned again as it is
shown, with its inline (cid:) pictures in place and remote images not loaded."""

from django import template
from django.urls import reverse
from django.utils.safestring import mark_safe

from conversations.services import sanitize_html

register = template.Library()


@register.filter
def inline_pictures(message) -> int:
    """How many of the message's pictures its HTML places in the text."""
    return sum(1 for cid in _inline(message) if f'src="cid:{cid}"' in message.html)


@register.filter
def formatted(message) -> str:
    inline = _inline(message)

    def attribute(tag, name, value):
        if tag == "img" and name == "src":
            # Only the message's own pictures: a remote image would tell its sender when the
            # mail was read, and from where.
            return inline.get(value[4:]) if value.startswith("cid:") else None
        return value

    # sanitize_html (nh3) keeps only safe tags, attributes and URL schemes.
    return mark_safe(sanitize_html(message.html, attribute))  # noqa: S308


def _inline(message) -> dict[str, str]:
    """content id -> the picture's address, for the message's fetched images."""
    return {
        file.content_id: reverse("inbox:attachment", args=[file.pk])
        for file in message.attachments.all()
        if file.content_id and file.is_image
    }
