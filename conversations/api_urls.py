"""`/api/v1/`: the REST API (conversations.api) and its OpenAPI schema."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from conversations import api

app_name = "api"

urlpatterns = [
    path("conversations", api.ConversationListApi.as_view(), name="conversations"),
    path("conversations/<int:number>", api.ConversationDetailApi.as_view(), name="conversation"),
    path("conversations/<int:number>/messages", api.MessageListApi.as_view(), name="messages"),
    path("conversations/<int:number>/replies", api.ReplyCreateApi.as_view(), name="replies"),
    path("conversations/<int:number>/notes", api.NoteCreateApi.as_view(), name="notes"),
    path("attachments/<int:attachment_id>", api.AttachmentDownloadApi.as_view(), name="attachment"),
    path("customers", api.CustomerListApi.as_view(), name="customers"),
    path("customers/<int:customer_id>", api.CustomerDetailApi.as_view(), name="customer"),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file of its own: the site's
    # Content-Security-Policy allows no inline script.
    path("docs", SpectacularSwaggerSplitView.as_view(url_name="api:schema"), name="docs"),
]
