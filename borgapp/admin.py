"""The admin as the control panel. Every page is checked by role (viewer reads, operator runs
jobs, admin configures); every operation queues a Job through `intake` and links to it."""

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from borgapp import admin_views as views
from borgapp import audit, intake, scheduling, validation
from borgapp.api.permissions import has_role
from borgapp.models import (
    Alert,
    Archive,
    AuditEvent,
    Channel,
    Job,
    Mount,
    Repository,
    RetentionPolicy,
    Schedule,
)


class RoleAdmin(admin.ModelAdmin):
    """Permissions from the role groups instead of per-model Django permissions."""

    write_role = "admin"
    # A URL typed without a scheme is taken as https (Django 6's default, chosen now).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def has_module_permission(self, request):
        return has_role(request.user, "viewer")

    def has_view_permission(self, request, obj=None):
        return has_role(request.user, "viewer")

    def has_add_permission(self, request):
        return has_role(request.user, self.write_role)

    def has_change_permission(self, request, obj=None):
        return has_role(request.user, self.write_role)

    def has_delete_permission(self, request, obj=None):
        return has_role(request.user, self.write_role)

    def has_operate_permission(self, request):
        return has_role(request.user, "operator")

    # Django's admin log calls: every configuration change is audited too.
    def _audit(self, verb: str, obj, message="") -> None:
        name = self.opts.model_name
        audit.record(f"{name}.{verb}", str(obj), outcome="success", message=message or "")

    def log_addition(self, request, obj, message):
        self._audit("created", obj)
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        changed = [f for part in message or [] for f in part.get("changed", {}).get("fields", [])]
        self._audit("changed", obj, ", ".join(changed))
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            self._audit("deleted", obj)
        return super().log_deletions(request, queryset)

    def page(self, route: str, view, url_name: str, **kwargs):
        def wrapped(request, *args, **more):
            return view(self, request, *args, **{**kwargs, **more})

        return path(route, self.admin_site.admin_view(wrapped), name=url_name)

    pages: list = []  # (route, label, view, role, kwargs): the object's operation pages

    def url_name(self, route: str) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_{route.replace('-', '_')}"

    def page_urls(self):
        return [
            self.page(f"<int:pk>/{route}/", view, self.url_name(route), **kwargs)
            for route, _, view, _, kwargs in self.pages
        ]

    def get_urls(self):
        return self.page_urls() + super().get_urls()

    def links(self, obj, role: str):
        chosen = [(route, label) for route, label, _, needed, _ in self.pages if needed == role]
        return format_html_join(
            " · ",
            '<a href="{}">{}</a>',
            ((reverse(f"admin:{self.url_name(r)}", args=[obj.pk]), label) for r, label in chosen),
        )

    def link_fields(self, request) -> list[str]:
        """The rows of links a user's role may use (a viewer sees no operation)."""
        return [
            f"{role}_links"
            for role in ("viewer", "operator", "admin")
            if has_role(request.user, role) and any(p[3] == role for p in self.pages)
        ]

    @admin.display(description="look")
    def viewer_links(self, obj):
        return self.links(obj, "viewer")

    @admin.display(description="operations")
    def operator_links(self, obj):
        return self.links(obj, "operator")

    @admin.display(description="administration")
    def admin_links(self, obj):
        return self.links(obj, "admin")


# --- repositories ------------------------------------------------------------------------------

THRESHOLDS = [
    "overdue_hours", "min_success_rate", "min_deduplication", "growth_factor",
    "growth_limit_bytes", "check_max_age_days",
]  # fmt: skip


class RepositoryForm(forms.ModelForm):
    setup = forms.ChoiceField(
        choices=[
            ("init", "Initialize a new borg repository"),
            ("import", "Import an existing one"),
        ],
        required=False,
        help_text="For a new registration only.",
    )
    passphrase = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; never shown. Leave blank to keep the stored one.",
    )

    class Meta:
        model = Repository
        fields = ["name", "location", "encryption", "append_only", *THRESHOLDS]

    def save(self, commit=True):
        repo = super().save(commit=False)
        if self.cleaned_data.get("passphrase"):
            repo.set_passphrase(self.cleaned_data["passphrase"])
        if commit:
            repo.save()
        return repo


REPO_PAGES = [
    ("backup", "Back up now", views.backup, "operator", {}),
    ("prune", "Prune", views.prune, "operator", {}),
    ("compact", "Compact", views.simple, "operator", {"name": "compact"}),
    ("check", "Check", views.simple, "operator", {"name": "check"}),
    ("sync", "Sync catalog", views.simple, "operator", {"name": "sync"}),
    ("break-lock", "Break lock", views.simple, "admin", {"name": "break-lock"}),
    ("key-export", "Export key", views.simple, "admin", {"name": "key-export"}),
    ("change-passphrase", "Change passphrase", views.change_passphrase, "admin", {}),
]


@admin.register(Repository)
class RepositoryAdmin(RoleAdmin):
    form = RepositoryForm
    pages = REPO_PAGES
    list_display = ["name", "health", "location", "archive_count", "size", "last_backup", "state"]
    search_fields = ["name", "location"]
    readonly_fields = [
        "state", "borg_id", "total_size", "unique_compressed_size",
        "stats_updated_at", "catalog_synced_at", "lease_job",
    ]  # fmt: skip

    def get_queryset(self, request):
        from django.db.models import Count, Max, Q

        return (
            super()
            .get_queryset(request)
            .annotate(
                n_archives=Count("archives", filter=Q(archives__is_checkpoint=False)),
                newest=Max("archives__start", filter=Q(archives__is_checkpoint=False)),
            )
        )

    def get_fields(self, request, obj=None):
        fields = ["name", "location", "encryption", "append_only", "passphrase"]
        if obj is None:
            return ["setup", *fields]
        fields += THRESHOLDS
        if not has_role(request.user, "admin"):
            fields.remove("passphrase")
        return [*self.link_fields(request), *fields, *self.readonly_fields]

    def get_readonly_fields(self, request, obj=None):
        links = self.link_fields(request) if obj is not None else []
        return [*links, *self.readonly_fields]

    @admin.display(description="archives", ordering="n_archives")
    def archive_count(self, obj):
        return obj.n_archives

    @admin.display(description="last backup", ordering="newest")
    def last_backup(self, obj):
        return obj.newest

    @admin.display(description="size on disk", ordering="unique_compressed_size")
    def size(self, obj):
        from borgapp.templatetags.humanize_bytes import human_bytes

        return human_bytes(obj.unique_compressed_size)

    @admin.display(description="health")
    def health(self, obj):
        from borgapp.health import overdue_after

        if obj.newest is None:
            colour, text = "red", "no backup yet"
        elif timezone.now() - obj.newest > overdue_after(obj):
            colour, text = "red", "overdue"
        else:
            colour, text = "green", "ok"
        return format_html('<span class="oc-h" data-health="{}">● {}</span>', colour, text)

    def log_addition(self, request, obj, message):
        # the init or import job that registration queued is the audited action
        return admin.ModelAdmin.log_addition(self, request, obj, message)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        # A new registration: init or import through intake (its passphrase is stored only
        # if borg accepts it).
        create = form.cleaned_data.get("setup", "init") != "import"
        job = intake.register(
            obj.name,
            obj.location,
            form.cleaned_data.get("passphrase") or None,
            create=create,
            encryption=obj.encryption,
            append_only=obj.append_only,
            trigger=Job.Trigger.ADMIN,
            user=request.user,
        )
        obj.pk = job.repository_id
        obj.refresh_from_db()
        what = "Initialization" if create else "Import"
        url = (
            reverse("admin:borgapp_repository_job", args=[job.pk])
            if False
            else reverse("admin:borgapp_job_change", args=[job.pk])
        )
        messages.success(
            request,
            format_html(
                '{} of repository {} queued as <a href="{}">job {}</a>.',
                what,
                obj.name,
                url,
                job.pk,
            ),
        )

    def add_view(self, request, form_url="", extra_context=None):
        try:
            return super().add_view(request, form_url, extra_context)
        except (validation.InvalidInput, intake.Conflict) as exc:
            messages.error(request, str(exc))
            from django.shortcuts import redirect

            return redirect(request.path)


# --- archives ----------------------------------------------------------------------------------

ARCHIVE_PAGES = [
    ("contents", "Browse contents", views.contents, "viewer", {}),
    ("diff", "Compare with another archive", views.diff, "viewer", {}),
    ("extract", "Extract", views.extract, "operator", {}),
    ("mount", "Mount / unmount", views.mount, "operator", {}),
    ("delete-archive", "Delete", views.delete_archive, "admin", {}),
]


@admin.register(Archive)
class ArchiveAdmin(RoleAdmin):
    list_display = [
        "name", "repository", "start", "duration_text", "original_size_text",
        "deduplicated_size_text", "ratio", "nfiles", "is_checkpoint",
    ]  # fmt: skip
    list_filter = ["repository", ("start", admin.DateFieldListFilter), "is_checkpoint"]
    list_select_related = ["repository"]
    search_fields = ["name", "comment", "hostname"]
    list_per_page = 50  # date_hierarchy is left out on purpose: it aggregates every archive
    show_full_result_count = False
    pages = ARCHIVE_PAGES

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # deleting runs borg: the Delete page queues a job

    def get_fields(self, request, obj=None):
        names = [f.name for f in Archive._meta.fields if f.editable and f.name != "id"]
        return [*self.link_fields(request), *names]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description="duration", ordering="duration")
    def duration_text(self, obj):
        return f"{obj.duration:.0f} s" if obj.duration is not None else "–"

    @admin.display(description="original", ordering="original_size")
    def original_size_text(self, obj):
        from borgapp.templatetags.humanize_bytes import human_bytes

        return human_bytes(obj.original_size)

    @admin.display(description="added", ordering="deduplicated_size")
    def deduplicated_size_text(self, obj):
        from borgapp.templatetags.humanize_bytes import human_bytes

        return human_bytes(obj.deduplicated_size)

    @admin.display(description="dedup ratio")
    def ratio(self, obj):
        value = obj.deduplication_ratio
        return f"{value:.1f}×" if value else "–"


# --- policies and schedules ------------------------------------------------------------------


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(RoleAdmin):
    list_display = ["name", "keep_within", *RetentionPolicy.KEEP_FIELDS, "is_recommended"]


def https_urls(field, **kwargs):
    """Form fields of a model form, with URLs typed without a scheme taken as https."""
    if isinstance(field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return field.formfield(**kwargs)


class ScheduleForm(forms.ModelForm):
    source_paths = views.LinesField(label="Source paths", help_text="one absolute path per line")
    exclude_patterns = views.LinesField(
        label="Exclude patterns",
        help_text="one pattern per line, borg's syntax (e.g. sh:**/*.tmp or pp:/home/cache)",
    )

    class Meta:
        model = Schedule
        fields = "__all__"
        formfield_callback = staticmethod(https_urls)


@admin.register(Schedule)
class ScheduleAdmin(RoleAdmin):
    form = ScheduleForm
    list_display = [
        "name", "operation", "cron", "cron_description", "timezone", "enabled", "paused_until",
        "next_run", "last_run_at", "last_outcome", "last_success_at",
    ]  # fmt: skip
    list_filter = ["operation", "enabled"]
    filter_horizontal = ["repositories"]
    readonly_fields = [
        "cron_description", "next_run", "next_five", "last_run_at", "last_outcome",
        "last_success_at",
    ]  # fmt: skip
    actions = ["run_now", "prune_dry_run", "pause_day", "resume"]
    fieldsets = [
        (None, {"fields": ["name", "repositories", "operation", "enabled", "paused_until"]}),
        ("When", {"fields": ["cron", "timezone", "cron_description", "next_run", "next_five"]}),
        (
            "Backup",
            {
                "fields": [
                    "source_paths", "exclude_patterns", "archive_prefix", "compression",
                    "one_file_system", "checkpoint_interval", "comment",
                ]
            },
        ),
        ("Prune", {"fields": ["retention_policy", "compact_after_prune"]}),
        ("Check", {"fields": ["check_scope", "verify_data", "max_duration", "check_last"]}),
        ("Verify restore", {"fields": ["sample_files", "sample_percent", "sample_max_bytes"]}),
        ("Pings", {"fields": ["ping_start_url", "ping_success_url", "ping_failure_url"]}),
        ("Last runs", {"fields": ["last_run_at", "last_outcome", "last_success_at"]}),
    ]  # fmt: skip

    @admin.display(description="next run")
    def next_run(self, obj):
        return scheduling.next_run(obj) if obj.pk else None

    @admin.display(description="the next five runs")
    def next_five(self, obj):
        if not obj.pk or not obj.enabled:
            return "–"
        runs = scheduling.upcoming(obj)
        return format_html_join(", ", "{}", ((run.strftime(views.RUN_FORMAT),) for run in runs))

    def get_urls(self):
        preview = self.page("cron-preview/", views.cron_preview, "borgapp_schedule_cron_preview")
        return [preview] + super().get_urls()

    @admin.action(description="Run now (one job per repository)", permissions=["operate"])
    def run_now(self, request, queryset):
        self._start(request, queryset, scheduling.start_runs)

    @admin.action(
        description="Prune dry run: what would be kept and removed", permissions=["operate"]
    )
    def prune_dry_run(self, request, queryset):
        self._start(request, queryset, scheduling.start_dry_run)

    @admin.action(description="Pause for 24 hours", permissions=["change"])
    def pause_day(self, request, queryset):
        until = timezone.now() + timezone.timedelta(hours=24)
        for schedule in queryset:
            schedule.paused_until = until
            schedule.save()
        messages.success(
            request, f"Paused {queryset.count()} schedule(s) until {until:%Y-%m-%d %H:%M} UTC."
        )

    @admin.action(description="Resume (end a pause)", permissions=["change"])
    def resume(self, request, queryset):
        for schedule in queryset:
            schedule.paused_until = None
            schedule.save()
        messages.success(request, f"Resumed {queryset.count()} schedule(s).")

    def _start(self, request, queryset, start):
        for schedule in queryset:
            try:
                made = start(schedule, trigger=Job.Trigger.ADMIN, user=request.user)
            except (validation.InvalidInput, intake.Conflict) as exc:
                self.message_user(request, f"{schedule.name}: {exc}", messages.ERROR)
                continue
            summary = format_html_join(
                ", ",
                '{}: <a href="{}">job {}</a> {}',
                (
                    (
                        j.repository_name,
                        reverse("admin:borgapp_job_change", args=[j.pk]),
                        j.pk,
                        j.status,
                    )
                    for j in made
                ),
            )
            self.message_user(
                request, format_html("{}: {}", schedule.name, summary), messages.SUCCESS
            )


# --- jobs ----------------------------------------------------------------------------------------


@admin.register(Job)
class JobAdmin(RoleAdmin):
    list_display = [
        "id", "kind", "repository_name", "status_badge", "trigger", "created_at", "started_at",
        "finished_at", "error_message",
    ]  # fmt: skip
    list_filter = ["status", "kind", "trigger", "repository_name"]
    search_fields = ["repository_name", "archive_name", "error_message"]
    show_full_result_count = False

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return format_html('<span class="oc-badge oc-{}">{}</span>', obj.status, obj.status)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # a queued or running job may hold a repository's lease: it is history only when done
        if obj is not None and not obj.is_finished:
            return False
        return has_role(request.user, "admin")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return views.job_page(self, request, object_id)

    def get_urls(self):
        return [
            self.page("<int:pk>/cancel/", views.cancel_job, "borgapp_job_cancel"),
            self.page("<int:pk>/key/", views.download_key, "borgapp_job_key"),
        ] + super().get_urls()


@admin.register(Mount)
class MountAdmin(RoleAdmin):
    list_display = ["mountpoint", "repository", "archive_name", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- audit trail -------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(RoleAdmin):
    """Read-only for everyone, superusers included (SEC-09); admins may read and export it."""

    list_display = ["at", "actor", "source", "client_address", "action", "target", "outcome",
                    "job_id_ref"]  # fmt: skip
    list_filter = ["outcome", "source", "action", ("at", admin.DateFieldListFilter)]
    search_fields = ["actor", "target", "action", "message"]
    show_full_result_count = False
    change_list_template = "admin/borgapp/auditevent/change_list.html"

    def has_module_permission(self, request):
        return has_role(request.user, "admin")

    def has_view_permission(self, request, obj=None):
        return has_role(request.user, "admin")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_actions(self, request):
        return {}

    def get_urls(self):
        return [
            path(
                "export.csv",
                self.admin_site.admin_view(self.export_csv),
                name="borgapp_auditevent_export",
            )
        ] + super().get_urls()

    def export_csv(self, request):
        """The rows the list shows (same filters and search), as CSV."""
        import csv

        from django.core.exceptions import PermissionDenied
        from django.http import StreamingHttpResponse

        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = self.get_changelist_instance(request).get_queryset(request)
        fields = ["at", "actor", "user_id_ref", "source", "client_address", "action", "target",
                  "params", "outcome", "message", "job_id_ref"]  # fmt: skip

        class Echo:
            def write(self, value):
                return value

        writer = csv.writer(Echo())

        def lines():
            yield writer.writerow(fields)
            for event in rows.iterator(chunk_size=2000):
                yield writer.writerow([getattr(event, f) for f in fields])

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="audit.csv"'
        return response


# --- alerts and notification channels -------------------------------------------------------


@admin.register(Alert)
class AlertAdmin(RoleAdmin):
    list_display = ["kind", "repository", "state", "reason", "first_seen", "last_seen",
                    "resolved_at"]  # fmt: skip
    list_filter = ["state", "kind", "repository"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ChannelForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=[(e, e.replace("_", " ")) for e in Channel.EVENTS],
        widget=forms.CheckboxSelectMultiple,
    )
    secret = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Webhooks: the HMAC-SHA256 signing secret. Stored encrypted; never shown. "
        "Leave blank to keep the stored one.",
    )

    class Meta:
        model = Channel
        fields = ["name", "kind", "target", "events", "enabled"]

    def save(self, commit=True):
        channel = super().save(commit=False)
        if self.cleaned_data.get("secret"):
            channel.set_secret(self.cleaned_data["secret"])
        if commit:
            channel.save()
        return channel


@admin.register(Channel)
class ChannelAdmin(RoleAdmin):
    form = ChannelForm
    list_display = ["name", "kind", "enabled", "events", "last_sent_at", "last_error_at",
                    "last_error"]  # fmt: skip
    readonly_fields = ["last_sent_at", "last_error", "last_error_at"]
    actions = ["send_test"]

    def get_fields(self, request, obj=None):
        return ["name", "kind", "target", "events", "secret", "enabled", *self.readonly_fields]

    @admin.action(description="Send a test message", permissions=["change"])
    def send_test(self, request, queryset):
        from borgapp import notifications

        for channel in queryset:
            ok = notifications.send_to(
                channel, "test", "[opscenter] test message", "A test message.", {"test": True}
            )
            channel.refresh_from_db()
            if ok:
                self.message_user(request, f"{channel.name}: sent.", messages.SUCCESS)
            else:
                self.message_user(request, f"{channel.name}: {channel.last_error}", messages.ERROR)
