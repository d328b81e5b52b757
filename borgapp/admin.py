"""Admin registration. The full control panel (actions, dashboard, live job pages) builds on
this; here every model can be seen and the configuration edited safely."""

from django import forms
from django.contrib import admin

from borgapp.models import Archive, Job, Mount, Repository, RetentionPolicy, Schedule


class RepositoryForm(forms.ModelForm):
    passphrase = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; never shown. Leave blank to keep the stored one.",
    )

    class Meta:
        model = Repository
        fields = ["name", "location", "encryption", "append_only"]

    def save(self, commit=True):
        repo = super().save(commit=False)
        if self.cleaned_data.get("passphrase"):
            repo.set_passphrase(self.cleaned_data["passphrase"])
        if commit:
            repo.save()
        return repo


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    form = RepositoryForm
    list_display = ["name", "location", "encryption", "state", "append_only", "updated_at"]
    search_fields = ["name", "location"]
    readonly_fields = [
        "state",
        "borg_id",
        "total_size",
        "unique_compressed_size",
        "stats_updated_at",
        "catalog_synced_at",
        "lease_job",
    ]


@admin.register(Archive)
class ArchiveAdmin(admin.ModelAdmin):
    list_display = ["name", "repository", "start", "original_size", "nfiles", "is_checkpoint"]
    list_filter = ["repository", "is_checkpoint", "created_by_app"]
    search_fields = ["name"]
    date_hierarchy = "start"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "keep_within", *RetentionPolicy.KEEP_FIELDS]


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = ["name", "operation", "cron", "timezone", "enabled"]
    filter_horizontal = ["repositories"]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "repository_name",
        "status",
        "trigger",
        "created_at",
        "started_at",
        "finished_at",
    ]
    list_filter = ["status", "kind", "trigger"]
    search_fields = ["repository_name", "archive_name", "error_message"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        # a queued or running job may hold a repository's lease: it is history only when done
        if obj is not None and not obj.is_finished:
            return False
        return super().has_delete_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Mount)
class MountAdmin(admin.ModelAdmin):
    list_display = ["mountpoint", "repository", "archive_name", "created_at"]

    def has_add_permission(self, request):
        return False
