from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from conversations.consumers import AgentConsumer, VisitorConsumer

websocket_urlpatterns = [
    # Agents: session auth, and only from our own pages.
    path(
        "ws/agent/",
        AllowedHostsOriginValidator(AuthMiddlewareStack(AgentConsumer.as_asgi())),
    ),
    # Visitors: from the sites the inbox allows (checked by the consumer), with their token.
    path("ws/widget/<slug:key>/", VisitorConsumer.as_asgi()),
]
