"""Adapters by channel kind. A channel is available once it is listed here."""

from channels_adapters.api.adapter import ApiAdapter
from channels_adapters.base import Adapter
from channels_adapters.email.adapter import EmailAdapter
from channels_adapters.messenger.adapter import MessengerAdapter
from channels_adapters.sms.adapter import SmsAdapter
from channels_adapters.webchat.adapter import WebchatAdapter
from channels_adapters.whatsapp.adapter import WhatsAppAdapter

ADAPTERS: dict[str, Adapter] = {
    adapter.kind: adapter
    for adapter in (
        EmailAdapter(),
        WebchatAdapter(),
        ApiAdapter(),
        SmsAdapter(),
        MessengerAdapter(),
        WhatsAppAdapter(),
    )
}


def adapter_for(kind: str) -> Adapter | None:
    return ADAPTERS.get(kind)
