from django.urls import path

from channels_adapters.webchat import views

app_name = "webchat"

urlpatterns = [
    path("demo/", views.demo, name="demo"),
    path("media/<str:token>", views.media, name="media"),
    path("<slug:key>/", views.page, name="page"),
    path("<slug:key>/session", views.session, name="session"),
    path("<slug:key>/upload", views.upload, name="upload"),
]
