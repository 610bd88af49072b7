from django.urls import path

from conversations import views

app_name = "inbox"

urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("availability", views.availability_set, name="availability"),
    path("<int:number>/", views.conversation_detail, name="conversation"),
    path("<int:number>/reply", views.conversation_reply, name="reply"),
    path("<int:number>/assign", views.conversation_assign, name="assign"),
    path("<int:number>/status", views.conversation_status, name="status"),
    path("<int:number>/priority", views.conversation_priority, name="priority"),
    path("messages/<int:message_id>/retry", views.message_retry, name="retry"),
    path("attachments/<int:attachment_id>", views.attachment_download, name="attachment"),
]
