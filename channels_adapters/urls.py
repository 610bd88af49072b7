from django.urls import path

from channels_adapters import views
from channels_adapters.api import views as api_views
from channels_adapters.email import views as email_views

urlpatterns = [
    path("api/<int:inbox_id>/messages", api_views.inbound, name="api-inbound"),
    path("api/<int:inbox_id>/statuses", api_views.status, name="api-status"),
    path("email/<int:inbox_id>/mime", email_views.inbound_mime, name="email-inbound"),
    path("<str:kind>/<int:inbox_id>/webhook", views.webhook, name="webhook"),
    path("media/<str:token>", views.provider_media, name="provider-media"),
]
