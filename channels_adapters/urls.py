from django.urls import path

from channels_adapters.api import views as api_views

urlpatterns = [
    path("api/<int:inbox_id>/messages", api_views.inbound, name="api-inbound"),
]
