from django.contrib import admin
from django.urls import path

admin.site.site_header = "Ops Center for BorgBackup"
admin.site.site_title = "Ops Center"

urlpatterns = [
    path("admin/", admin.site.urls),
]
