from django.urls import path

from conversations import actions, canned, customers, reports, views

app_name = "inbox"

urlpatterns = [
    path("", views.conversation_list, name="list"),
    path("availability", views.availability_set, name="availability"),
    path("notifications", views.notification_list, name="notifications"),
    path("reports", reports.reports, name="reports"),
    path("bulk", views.conversation_bulk, name="bulk"),
    path("views/save", views.saved_view_save, name="view_save"),
    path("views/<int:view_id>/delete", views.saved_view_delete, name="view_delete"),
    path("<int:number>/", views.conversation_detail, name="conversation"),
    path("<int:number>/reply", views.conversation_reply, name="reply"),
    path("<int:number>/assign", views.conversation_assign, name="assign"),
    path("<int:number>/status", views.conversation_status, name="status"),
    path("<int:number>/priority", views.conversation_priority, name="priority"),
    path("<int:number>/canned", canned.canned_search, name="canned"),
    path("<int:number>/tags", actions.conversation_tags, name="tags"),
    path("<int:number>/follow", actions.conversation_follow, name="follow"),
    path("<int:number>/transfer", actions.conversation_transfer, name="transfer"),
    path("<int:number>/copy", actions.conversation_copy, name="copy"),
    path("<int:number>/uncopy", actions.conversation_uncopy, name="uncopy"),
    path("<int:number>/merge", actions.conversation_merge, name="merge"),
    path("<int:number>/macro", actions.macro_apply, name="macro"),
    path("<int:number>/end-chat", actions.chat_end, name="chat_end"),
    path("messages/<int:message_id>/retry", views.message_retry, name="retry"),
    path("attachments/<int:attachment_id>", views.attachment_download, name="attachment"),
    path("customers/<int:customer_id>/", customers.customer_detail, name="customer"),
    path("customers/<int:customer_id>/edit", customers.customer_edit, name="customer_edit"),
    path(
        "customers/<int:customer_id>/identities",
        customers.customer_identity_add,
        name="customer_identities",
    ),
    path("customers/<int:customer_id>/merge", customers.customer_merge, name="customer_merge"),
    path("customers/<int:customer_id>/block", customers.customer_block, name="customer_block"),
    path("customers/<int:customer_id>/erase", customers.customer_erase, name="customer_erase"),
    path("customers/<int:customer_id>/export", customers.customer_export, name="customer_export"),
    path("customers/<int:customer_id>/start", actions.conversation_start, name="customer_start"),
]
