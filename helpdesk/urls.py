from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from channels_adapters.webchat import views as webchat_views
from helpdesk import views

admin.site.site_header = "Threadline administration"
admin.site.site_title = "Threadline"
admin.site.index_title = "Configure inboxes, teams, agents and customers"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("login/forgot", views.PasswordResetView.as_view(), name="password_reset"),
    path("login/forgot/sent", views.PasswordResetDoneView.as_view(), name="password_reset_done"),
    path(
        "login/reset/<uidb64>/<token>",
        views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "login/reset/done",
        views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("inbox/api-tokens", views.api_tokens, name="api_tokens"),
    path("inbox/profile", views.profile, name="profile"),
    path("inbox/", include("conversations.urls")),
    path("api/v1/", include("conversations.api_urls")),
    path("healthz", views.healthz, name="healthz"),
    path("rate/<str:token>", views.rate, name="rate"),
    path("admin/", admin.site.urls),
    path("channels/", include("channels_adapters.urls")),
    path("widget.js", webchat_views.script, name="widget-script"),
    path("widget/", include("channels_adapters.webchat.urls")),
]
