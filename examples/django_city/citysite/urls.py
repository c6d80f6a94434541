from cities import views
from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("city", views.city),
    path("acity", views.acity),
    path("visit", views.visit),
    path("stats", views.stats),
    path("health", views.health),
]
