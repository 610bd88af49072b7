from channels_adapters.base import Adapter, Capabilities, SendResult
from conversations.models import Channel
from conversations.realtime import publish_customer_event


class WebchatAdapter(Adapter):
    """The chat widget. A reply is "sent" once stored and announced to the visitor's sockets;
    the widget reads it from the database, so announcing twice cannot show it twice."""

    kind = Channel.WEBCHAT
    capabilities = Capabilities(attachments=True, idempotent_send=True)

    def send(self, message):
        publish_customer_event(
            message.conversation.customer_id,
            "message",
            conversation=message.conversation_id,
            message=message.pk,
        )
        return SendResult()
