"""Admin registration. The full control panel (actions, dashboard, live job pages) builds on
this; here every model can be seen and the configuration edited safely."""

from django import forms
from django.contrib import admin, messages

from borgapp import scheduling, validation
from borgapp.intake import Conflict
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
    list_display = [
        "name",
        "operation",
        "cron",
        "cron_description",
        "timezone",
        "enabled",
        "next_run",
        "last_run_at",
        "last_outcome",
        "last_success_at",
    ]
    list_filter = ["operation", "enabled"]
    filter_horizontal = ["repositories"]
    readonly_fields = [
        "cron_description",
        "next_run",
        "last_run_at",
        "last_outcome",
        "last_success_at",
    ]
    actions = ["run_now", "prune_dry_run"]
    fieldsets = [
        (None, {"fields": ["name", "repositories", "operation", "enabled", "paused_until"]}),
        ("When", {"fields": ["cron", "timezone", "cron_description", "next_run"]}),
        (
            "Backup",
            {
                "fields": [
                    "source_paths",
                    "exclude_patterns",
                    "archive_prefix",
                    "compression",
                    "one_file_system",
                    "checkpoint_interval",
                    "comment",
                ]
            },
        ),
        ("Prune", {"fields": ["retention_policy", "compact_after_prune"]}),
        ("Check", {"fields": ["check_scope", "verify_data", "max_duration", "check_last"]}),
        ("Verify restore", {"fields": ["sample_files", "sample_percent", "sample_max_bytes"]}),
        ("Last runs", {"fields": ["last_run_at", "last_outcome", "last_success_at"]}),
    ]

    @admin.display(description="next run")
    def next_run(self, obj):
        return scheduling.next_run(obj) if obj.pk else None

    @admin.action(description="Run now (one job per repository)")
    def run_now(self, request, queryset):
        self._start(request, queryset, scheduling.start_runs)

    @admin.action(description="Prune dry run: list what would be kept and removed")
    def prune_dry_run(self, request, queryset):
        self._start(request, queryset, scheduling.start_dry_run)

    def _start(self, request, queryset, start):
        for schedule in queryset:
            try:
                made = start(schedule, trigger=Job.Trigger.ADMIN, user=request.user)
            except (validation.InvalidInput, Conflict) as exc:
                self.message_user(request, f"{schedule.name}: {exc}", messages.ERROR)
                continue
            summary = ", ".join(f"{j.repository_name}: job {j.pk} {j.status}" for j in made)
            self.message_user(request, f"{schedule.name}: {summary}", messages.SUCCESS)


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
