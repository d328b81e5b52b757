"""The admin as the control panel. Every page is checked by role (viewer reads, operator runs
jobs, admin configures); every operation queues a Job through `intake` and links to it."""

import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db import DataError, models
from django.db.models import Count, Max, Q, Subquery
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from borgapp import (
    admin_delete,
    admin_files,
    audit,
    dumps,
    errors,
    fleet,
    health,
    hooks,
    intake,
    jobs,
    notifications,
    outbound,
    scheduling,
    validation,
    vault,
)
from borgapp import admin_views as views
from borgapp.models import (
    Alert,
    Archive,
    AuditEvent,
    Channel,
    DatabaseSource,
    Host,
    Job,
    Mount,
    Repository,
    RetentionPolicy,
    Schedule,
)
from borgapp.roles import has_role
from borgapp.units import human_bytes


class RoleAdmin(admin.ModelAdmin):
    """Permissions from the role groups instead of per-model Django permissions."""

    write_role = "admin"
    # A URL typed without a scheme is taken as https (Django 6's default, chosen now).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def has_module_permission(self, request):
        return has_role(request.user, "viewer")

    def get_changelist_instance(self, request):
        """A filter the database cannot apply (a year past 9999 in the date hierarchy, a time
        zone offset PostgreSQL refuses) is treated as Django treats an unknown one: the list
        again, without filters, rather than a 500."""
        try:
            return super().get_changelist_instance(request)
        except (DataError, OverflowError, ValueError) as exc:
            raise IncorrectLookupParameters(exc) from exc

    def has_view_permission(self, request, obj=None):
        return has_role(request.user, "viewer")

    def has_add_permission(self, request):
        return has_role(request.user, self.write_role)

    def has_change_permission(self, request, obj=None):
        return has_role(request.user, self.write_role)

    def has_delete_permission(self, request, obj=None):
        return has_role(request.user, self.write_role)

    def may_go_with(self, request, obj):
        """May obj's row go because the object it belongs to is deleted (admin_delete)?"""
        return self.has_delete_permission(request, obj)

    def get_deleted_objects(self, objs, request):
        return admin_delete.deleted_objects(objs, request, self.admin_site)

    def has_operate_permission(self, request):
        return has_role(request.user, "operator")

    # Django's admin log calls: every configuration change is audited too.
    def _audit(self, verb: str, obj, message="") -> None:
        name = self.opts.model_name
        audit.record(f"{name}.{verb}", str(obj), outcome="success", message=message or "")

    audit_additions = True  # False where the job an addition queues is the audited action

    def log_addition(self, request, obj, message):
        if self.audit_additions:
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

    request = None  # set by RepositoryAdmin.get_form
    job = None  # the init or import job a new registration started

    def _post_clean(self):
        """A new registration is checked by borg before the page answers: once the model's
        own validation (unique name and location included) has passed, the init or import
        job starts here and the request waits for it (bounded, ADMIN_REGISTER_WAIT), so a
        wrong passphrase or a missing repository comes back as an error on its field, with
        everything else still filled in, instead of "added" and a row that then vanishes."""
        super()._post_clean()
        if self.instance.pk is None and not self.errors:
            self._register(self.cleaned_data)

    def _register(self, cleaned):
        create = cleaned.get("setup", "init") != "import"
        try:
            job = intake.register(
                cleaned["name"], cleaned["location"], cleaned.get("passphrase") or None,
                create=create, encryption=cleaned["encryption"],
                append_only=cleaned.get("append_only", False),
                trigger=Job.Trigger.ADMIN, user=self.request.user if self.request else None,
            )  # fmt: skip
        except errors.REFUSED as exc:
            self.add_error(_field_of(str(exc)), str(exc))
            return
        job = jobs.wait_for(job, settings.ADMIN_REGISTER_WAIT)
        if job.status in (Job.Status.FAILED, Job.Status.INTERRUPTED, Job.Status.CANCELLED):
            hint = errors.HINTS.get(job.error_code, "")
            message = f"{job.get_kind_display()} failed: {job.error_message}"
            field = {"wrong_passphrase": "passphrase", "repository_missing": "location",
                     "repository_exists": "location"}.get(job.error_code)  # fmt: skip
            if job.error_code == "wrong_passphrase":
                hint = "Type the passphrase this repository was created with."
            self.add_error(field, f"{message} {hint}".strip())
            return
        self.job = job

    def save(self, commit=True):
        repo = super().save(commit=False)
        if self.cleaned_data.get("passphrase"):
            repo.set_passphrase(self.cleaned_data["passphrase"])
        if commit:
            repo.save()
        return repo


def _field_of(message: str) -> str | None:
    """The form field a refusal from intake is about, by the words it names."""
    for word, field in (("passphrase", "passphrase"), ("location", "location"),
                        ("Encryption", "encryption"), ("name", "name")):  # fmt: skip
        if word in message:
            return field
    return None


REPO_PAGES = [
    ("files", "Find files", admin_files.repository_search, "viewer", {}),
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
    audit_additions = False  # the init or import job that registration queued is audited
    list_display = ["name", "health", "location", "archive_count", "size", "last_backup", "state"]
    search_fields = ["name", "location"]
    readonly_fields = [
        "state", "borg_id", "original_text", "on_disk_text", "dedup_text",
        "stats_updated_at", "catalog_synced_at", "lease_job",
    ]  # fmt: skip

    @admin.display(description="original size of all archives")
    def original_text(self, obj):
        return human_bytes(obj.total_size)

    @admin.display(description="size on disk")
    def on_disk_text(self, obj):
        return human_bytes(obj.unique_compressed_size)

    @admin.display(description="deduplication ratio")
    def dedup_text(self, obj):
        return f"{obj.deduplication_ratio:,.1f}×" if obj.deduplication_ratio else "–"

    def get_queryset(self, request):
        last_job = health.last_finished_job()
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_archives=Count("archives", filter=Q(archives__is_checkpoint=False)),
                newest=Max("archives__start", filter=Q(archives__is_checkpoint=False)),
                last_job_kind=Subquery(last_job.values("kind")[:1]),
                last_job_status=Subquery(last_job.values("status")[:1]),
                firing_alert=Subquery(health.firing_alert().values("reason")[:1]),
            )
        )

    def get_deleted_objects(self, objs, request):
        # Deleting forgets the registration (the borg repository stays), as the API's
        # DELETE does, and likewise not while a job holds the repository: "protected"
        # makes Django refuse both the page and its POST.
        listed, counts, refused, protected = super().get_deleted_objects(objs, request)
        for repo in objs:
            if repo.lease_job_id:
                url = reverse("admin:borgapp_job_change", args=(repo.lease_job_id,))
                protected.append(format_html(
                    '{} is busy: <a href="{}">{}</a> holds it. Try again when that job '
                    "has finished.", repo.name, url, repo.lease_job,
                ))  # fmt: skip
        return listed, counts, refused, protected

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
        return human_bytes(obj.unique_compressed_size)

    @admin.display(description="health")
    def health(self, obj):
        last_job = None
        if obj.last_job_status:
            last_job = Job(kind=obj.last_job_kind, status=obj.last_job_status)
        judged = health.judge(obj, obj.newest, last_job, timezone.now(), obj.firing_alert)
        return format_html(
            '<span class="oc-h" data-health="{}" title="{}">● {}</span>',
            judged.colour,
            "; ".join(judged.reasons),
            judged.headline,
        )

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.request = request
        return form

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        """Adding runs outside the admin's usual transaction around the whole request: the
        registration (RepositoryForm.clean) commits its rows in its own transaction, so the
        worker sees the job it waits for, and no write lock is held while borg answers."""
        if object_id is None and request.method == "POST":
            return self._changeform_view(request, object_id, form_url, extra_context)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        # A new registration: the form's validation registered it (RepositoryForm.clean)
        job = form.job
        obj.pk = job.repository_id
        obj.refresh_from_db()
        what = "Initialization" if job.kind == Job.Kind.INIT else "Import"
        url = reverse("admin:borgapp_job_change", args=[job.pk])
        state = "done in" if job.status in Job.OK else "queued as"
        messages.success(
            request,
            format_html(
                '{} of repository {} {} <a href="{}">job {}</a>.', what, obj.name, state, url,
                job.pk,
            ),
        )  # fmt: skip


# --- archives ----------------------------------------------------------------------------------

ARCHIVE_PAGES = [
    ("contents", "Browse contents", views.contents, "viewer", {}),
    ("files", "Find files", admin_files.archive_search, "viewer", {}),
    ("diff", "Compare with another archive", views.diff, "viewer", {}),
    ("extract", "Extract", views.extract, "operator", {}),
    ("download", "Download", views.download, "operator", {}),
    ("restore", "Restore in place", views.restore_in_place, "admin", {}),
    ("mount", "Mount / unmount", views.mount, "operator", {}),
    ("restore-database", "Restore a database", views.restore_database, "admin", {}),
    ("delete-archive", "Delete", views.delete_archive, "admin", {}),
]


@admin.register(Archive)
class ArchiveAdmin(RoleAdmin):
    list_display = [
        "name", "repository", "start", "duration_text", "original_size_text",
        "deduplicated_size_text", "ratio", "nfiles_text",
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

    def may_go_with(self, request, obj):
        # the row goes with its repository's registration; the archive stays in borg
        return has_role(request.user, "admin")

    # what a person reads on an archive's page: sizes and counts with units, borg's id last
    DETAIL = [
        "repository", "name", "start", "end", "duration_text", "nfiles_text",
        "original_size_text", "compressed_size_text", "deduplicated_size_text", "ratio",
        "hostname", "username", "comment", "is_checkpoint", "created_by_app", "synced_at",
        "borg_id",
    ]  # fmt: skip

    def get_fields(self, request, obj=None):
        return [*self.link_fields(request), *self.DETAIL]

    def get_readonly_fields(self, request, obj=None):
        return self.get_fields(request, obj)

    @admin.display(description="duration", ordering="duration")
    def duration_text(self, obj):
        return f"{obj.duration:,.1f} s" if obj.duration is not None else "–"

    @admin.display(description="files", ordering="nfiles")
    def nfiles_text(self, obj):
        return f"{obj.nfiles:,}" if obj.nfiles is not None else "–"

    @admin.display(description="compressed")
    def compressed_size_text(self, obj):
        return human_bytes(obj.compressed_size)

    @admin.display(description="original", ordering="original_size")
    def original_size_text(self, obj):
        return human_bytes(obj.original_size)

    @admin.display(description="added", ordering="deduplicated_size")
    def deduplicated_size_text(self, obj):
        return human_bytes(obj.deduplicated_size)

    @admin.display(description="deduplication")
    def ratio(self, obj):
        value = obj.deduplication_ratio
        return f"{value:,.1f}×" if value else "–"


# --- policies and schedules ------------------------------------------------------------------


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(RoleAdmin):
    list_display = ["name", "keep_within", *RetentionPolicy.KEEP_FIELDS, "is_recommended"]


class DatabaseSourceForm(forms.ModelForm):
    password = forms.CharField(
        required=False, strip=False, widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted, never shown. Leave empty to keep the stored one.",
    )  # fmt: skip
    databases = views.LinesField(
        label="Databases", help_text="one name per line; none: every database of the server"
    )

    class Meta:
        model = DatabaseSource
        fields = ["name", "kind", "host", "port", "username", "password", "databases", "path",
                  "agent_host"]  # fmt: skip

    def clean_password(self):
        password = self.cleaned_data.get("password") or ""
        try:
            validation.validate_passphrase(password)
        except validation.InvalidInput as exc:
            raise forms.ValidationError(str(exc)) from None
        return password

    def save(self, commit=True):
        if self.cleaned_data.get("password"):
            self.instance.set_password(self.cleaned_data["password"])
        return super().save(commit)


@admin.register(Host)
class HostAdmin(RoleAdmin):
    """The fleet's hosts: adding one (or asking for a new token) shows its one-time
    enrollment token on the next page, once; revoking one refuses its agent at once."""

    list_display = ["name", "state", "last_seen", "address", "agent_version", "borg_version"]
    readonly_fields = ["state", "last_seen", "address", "agent_version", "borg_version",
                       "created_at", "append_only_lines"]  # fmt: skip

    @admin.display(description="append-only ssh lines")
    def append_only_lines(self, obj):
        """For each ssh repository, the authorized_keys line for the repository server that
        lets this host's agent only append to it."""
        if obj is None or not obj.ssh_public_key:
            return "– (the agent sends its ssh key when it enrolls)"
        repos = Repository.objects.filter(location__startswith="ssh://").order_by("name")
        lines = [(r.name, fleet.authorized_keys_line(obj, r.location)) for r in repos]
        if not lines:
            return "– (no ssh repository)"
        return format_html_join("", "<p>{}:<br><code>{}</code></p>", lines)

    actions = ["new_token", "revoke_hosts"]

    def get_readonly_fields(self, request, obj=None):
        return ["name", *self.readonly_fields] if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            request.host_token = fleet.issue_token(obj)

    def response_add(self, request, obj, post_url_continue=None):
        return self._token_page(request, obj, request.host_token)

    def _token_page(self, request, host, token):
        context = {**self.admin_site.each_context(request), "title": f"Enroll {host.name}",
                   "host": host, "token": token, "opts": self.opts,
                   "center": request.build_absolute_uri("/").rstrip("/")}  # fmt: skip
        response = TemplateResponse(request, "admin/borgapp/host_token.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Issue a new enrollment token (ends the agent's credential)")
    def new_token(self, request, queryset):
        if not has_role(request.user, "admin"):
            raise PermissionDenied
        if queryset.count() != 1:
            self.message_user(request, "Choose one host.", messages.ERROR)
            return None
        host = queryset.get()
        return self._token_page(request, host, fleet.issue_token(host))

    @admin.action(description="Revoke: refuse the agent from now on")
    def revoke_hosts(self, request, queryset):
        if not has_role(request.user, "admin"):
            raise PermissionDenied
        for host in queryset:
            fleet.revoke(host)
        self.message_user(request, f"Revoked {queryset.count()} host(s).")


@admin.register(DatabaseSource)
class DatabaseSourceAdmin(RoleAdmin):
    """Admins write them; viewers see where they are, never a password."""

    form = DatabaseSourceForm
    list_display = ["name", "kind", "where", "databases_shown", "password_stored"]
    list_select_related = ["agent_host"]
    actions = ["test_connection"]

    @admin.display(description="where")
    def where(self, obj):
        """As its machine sees it; a fleet host's source names the host first."""
        where = obj.path
        if obj.kind != DatabaseSource.Kind.SQLITE:
            where = f"{obj.host}:{obj.port or dumps.DEFAULT_PORTS[obj.kind]}"
        return f"{obj.agent_host.name}: {where}" if obj.agent_host_id else where

    @admin.display(description="databases")
    def databases_shown(self, obj):
        if obj.kind == DatabaseSource.Kind.SQLITE:
            return "–"
        return ", ".join(obj.databases) if obj.databases else "all"

    @admin.display(description="password", boolean=True)
    def password_stored(self, obj):
        return bool(obj.password_encrypted)

    @admin.action(description="Test the connection (sign in, list what would be dumped)")
    def test_connection(self, request, queryset):
        if not has_role(request.user, "admin"):
            raise PermissionDenied
        for source in queryset[:10]:
            if source.agent_host_id:
                self.message_user(request, f"{source.name} is on host {source.agent_host.name}: "
                                  "only its agent reaches it (a backup of that host with this "
                                  "source tests it).", level=messages.WARNING)  # fmt: skip
                continue
            with tempfile.TemporaryDirectory(prefix="opscenter-") as scratch:
                try:
                    found = dumps.test_connection(source.spec(), Path(scratch))
                except errors.OperationError as exc:
                    self.message_user(request, str(exc), level=messages.ERROR)
                    continue
            self.message_user(request, f"{source.name}: signed in; would dump "
                              f"{', '.join(found) or 'nothing'}.")  # fmt: skip


def https_urls(field, **kwargs):
    """Form fields of a model form, with URLs typed without a scheme taken as https."""
    if isinstance(field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return field.formfield(**kwargs)


def ping_field(when: str):
    return forms.URLField(
        label=f"Ping URL on {when}",
        required=False,
        assume_scheme="https",
        max_length=2000,
        help_text="Stored encrypted; shown to admins only (others see scheme and host).",
    )


class HookLinesField(views.LinesField):
    """Hook commands, one per line as a shell would type them (split without a shell)."""

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return "\n".join(hooks.shown(a) if isinstance(a, list) else str(a) for a in value)
        return value


def hook_field(stage: str, help_text: str):
    return HookLinesField(label=f"{stage} hooks", help_text=help_text)


class ScheduleForm(forms.ModelForm):
    source_paths = views.LinesField(label="Source paths", help_text="one absolute path per line")
    hooks_before = hook_field(
        "Before", "one command per line, run in order before borg (e.g. /usr/bin/docker stop "
        "db); no shell: | ; > and $VAR are plain arguments. One that fails stops the job.",
    )  # fmt: skip
    hooks_after_success = hook_field("After-success", "run when the job succeeded")
    hooks_after_failure = hook_field("After-failure", "run when the job failed or was cancelled")
    hooks_always_after = hook_field(
        "Always-after", "run last, whatever happened (e.g. /usr/bin/docker start db)"
    )
    hook_timeout = forms.IntegerField(
        required=False, min_value=1, initial=300,
        help_text="seconds each hook may run before it is stopped (and fails); empty: 300",
    )  # fmt: skip

    def clean_hook_timeout(self):
        return self.cleaned_data.get("hook_timeout") or 300

    exclude_patterns = views.LinesField(
        label="Exclude patterns",
        help_text="one pattern per line, borg's syntax (e.g. sh:**/*.tmp or pp:/home/cache)",
    )
    ping_start_url = ping_field("start")
    ping_success_url = ping_field("success")
    ping_failure_url = ping_field("failure")
    reveal_pings = False  # shows and saves the ping URLs: the admin's get_form sets it for admins

    class Meta:
        model = Schedule
        fields = "__all__"
        formfield_callback = staticmethod(https_urls)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for which in Schedule.PINGS:
            name = f"ping_{which}_url"
            if self.reveal_pings and name in self.fields and self.instance.pk:
                try:
                    self.initial[name] = self.instance.get_ping(which)
                except vault.VaultError as exc:
                    self.fields[name].help_text = f"{exc} Give the URL again."

    def _clean_ping(self, which: str) -> str:
        url = (self.cleaned_data.get(f"ping_{which}_url") or "").strip()
        if url:
            try:
                outbound.check_http_url(url, what="ping URL")
            except outbound.Refused as exc:
                raise forms.ValidationError(str(exc)) from None
        return url

    def clean_ping_start_url(self):
        return self._clean_ping("start")

    def clean_ping_success_url(self):
        return self._clean_ping("success")

    def clean_ping_failure_url(self):
        return self._clean_ping("failure")

    def clean(self):
        """The databases a backup dumps are on the machine it runs on (intake says the same
        when a run starts; here the admin learns it before saving)."""
        cleaned = super().clean()
        host = cleaned.get("host")
        for source in cleaned.get("databases") or []:
            if source.agent_host_id != (host.pk if host else None):
                where = f"host {source.agent_host}" if source.agent_host_id else "the ops center"
                self.add_error("databases", f"{source.name} is on {where}: a schedule dumps "
                               "only databases of the machine it backs up.")  # fmt: skip
        return cleaned

    def save(self, commit=True):
        for which in Schedule.PINGS:
            if f"ping_{which}_url" in self.fields and self.reveal_pings:
                self.instance.set_ping(which, self.cleaned_data.get(f"ping_{which}_url", ""))
        return super().save(commit)


@admin.register(Schedule)
class ScheduleAdmin(RoleAdmin):
    form = ScheduleForm
    # one line per schedule at 1024 px: the cron in words with its zone, what comes next and
    # how the last run went (the rest is on the schedule's page)
    list_display = ["name", "operation", "when", "enabled", "next_run", "last_outcome"]
    list_filter = ["operation", "enabled"]
    filter_horizontal = ["repositories", "databases"]
    readonly_fields = [
        "cron_description", "next_run", "next_five", "last_run_at", "last_outcome",
        "last_success_at",
    ]  # fmt: skip
    actions = ["run_now", "prune_dry_run", "pause_day", "resume"]
    fieldsets = [
        (None, {"fields": ["name", "repositories", "host", "operation", "enabled",
                           "paused_until"]}),
        ("When", {"fields": ["cron", "timezone", "cron_description", "next_run", "next_five"]}),
        # Each operation's own fields: the form shows those of the chosen operation only
        # (schedule_form.js; without scripts every set stays visible and the others are unused)
        ("Backup set", {"fields": ["archive_prefix"],
                        "classes": ["oc-op", "oc-op-backup", "oc-op-prune",
                                    "oc-op-verify_restore"]}),
        ("Backup", {"fields": ["source_paths", "exclude_patterns", "databases", "compression",
                               "one_file_system", "checkpoint_interval", "comment"],
                    "classes": ["oc-op", "oc-op-backup"]}),
        ("Prune", {"fields": ["retention_policy", "compact_after_prune"],
                   "classes": ["oc-op", "oc-op-prune"]}),
        ("Check", {"fields": ["check_scope", "verify_data", "max_duration", "check_last"],
                   "classes": ["oc-op", "oc-op-check"]}),
        ("Verify restore", {"fields": ["sample_files", "sample_percent", "sample_max_bytes"],
                            "classes": ["oc-op", "oc-op-verify_restore"]}),
        ("Hooks", {"fields": ["hooks_before", "hooks_after_success", "hooks_after_failure",
                              "hooks_always_after", "hook_timeout"],
                   "description": "Commands the worker runs as its own user around each job "
                   "of this schedule, with the job's facts in OPSCENTER_* variables (never a "
                   "passphrase). Only admins see and change them."}),
        ("Pings", {"fields": ["ping_start_url", "ping_success_url", "ping_failure_url"]}),
        ("Last runs", {"fields": ["last_run_at", "last_outcome", "last_success_at"]}),
    ]  # fmt: skip
    PING_SHOWN = ["ping_start_shown", "ping_success_shown", "ping_failure_shown"]

    HOOKS_SHOWN = ["hooks_shown"]

    def get_fieldsets(self, request, obj=None):
        """Admins edit the ping URLs and hooks; anyone else sees the pings masked (scheme and
        host) and only how many hooks there are (a command line can name internal things)."""
        if has_role(request.user, "admin"):
            return self.fieldsets
        hidden = {"Pings": self.PING_SHOWN, "Hooks": self.HOOKS_SHOWN}
        return [
            (name, {"fields": hidden[name]}) if name in hidden else (name, options)
            for name, options in self.fieldsets
        ]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), *self.PING_SHOWN, *self.HOOKS_SHOWN]

    @admin.display(description="hooks")
    def hooks_shown(self, obj):
        counts = [
            f"{len(obj.hooks(stage))} {stage.replace('_', '-')}"
            for stage in validation.HOOK_STAGES
            if obj.hooks(stage)
        ]
        return ", ".join(counts) + " (shown to admins)" if counts else "none"

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.reveal_pings = has_role(request.user, "admin")
        return form

    @admin.display(description="ping URL on start")
    def ping_start_shown(self, obj):
        return obj.shown_ping("start") or "–"

    @admin.display(description="ping URL on success")
    def ping_success_shown(self, obj):
        return obj.shown_ping("success") or "–"

    @admin.display(description="ping URL on failure")
    def ping_failure_shown(self, obj):
        return obj.shown_ping("failure") or "–"

    @admin.display(description="when", ordering="cron")
    def when(self, obj):
        return format_html('<span title="{}">{} ({})</span>', obj.cron, obj.cron_description,
                           obj.timezone)  # fmt: skip

    @admin.display(description="next run")
    def next_run(self, obj):
        """In the schedule's own time zone, as the preview and the next five runs."""
        when = scheduling.next_run(obj) if obj.pk else None
        if when is None:
            return "–"
        return when.astimezone(ZoneInfo(obj.timezone)).strftime(views.RUN_FORMAT)

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
            except errors.REFUSED as exc:
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


def clipped(text: str, wide: bool = False):
    """A list cell's text kept to one line: cut with an ellipsis, the whole text its title."""
    return format_html(
        '<span class="oc-clip{}" title="{}">{}</span>', " oc-wide" if wide else "", text, text
    )


@admin.register(Job)
class JobAdmin(RoleAdmin):
    list_display = [
        "id", "kind", "repository_shown", "status_badge", "trigger", "created_at", "took",
        "problem",
    ]  # fmt: skip
    list_filter = ["status", "kind", "trigger", "repository_name"]

    @admin.display(description="repository", ordering="repository_name")
    def repository_shown(self, obj):  # not `repository`: the model's field would win
        return clipped(obj.repository_name)

    @admin.display(description="problem")
    def problem(self, obj):
        return clipped(obj.error_message, wide=True) if obj.error_message else ""

    @admin.display(description="took")
    def took(self, obj):
        return f"{obj.duration:,.0f} s" if obj.duration is not None else "–"

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
            self.page("<int:pk>/restored/", views.restored, "borgapp_job_restored"),
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

    list_display = ["at", "actor", "origin", "action", "target", "outcome", "count", "job"]
    list_filter = ["outcome", "source", "action", ("at", admin.DateFieldListFilter)]
    search_fields = ["actor", "target", "action", "message"]
    show_full_result_count = False
    change_list_template = "admin/borgapp/auditevent/change_list.html"

    def has_module_permission(self, request):
        return has_role(request.user, "admin")

    @admin.display(description="from", ordering="source")
    def origin(self, obj):
        return f"{obj.source} {obj.client_address}" if obj.client_address else obj.source

    @admin.display(description="job", ordering="job_id_ref")
    def job(self, obj):
        return obj.job_id_ref if obj.job_id_ref is not None else "–"

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
                  "params", "outcome", "count", "message", "job_id_ref"]  # fmt: skip

        class Echo:
            def write(self, value):
                return value

        writer = csv.writer(Echo())

        def cell(value) -> str:
            # A spreadsheet runs a cell that starts with = + - @ (or a tab or CR before one)
            # as a formula: such a cell is prefixed with ' (OWASP's advice), shown as typed.
            text = "" if value is None else str(value)
            return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

        def lines():
            yield writer.writerow(fields)
            for event in rows.iterator(chunk_size=2000):
                yield writer.writerow([cell(getattr(event, f)) for f in fields])

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="audit.csv"'
        return response


# --- alerts and notification channels -------------------------------------------------------


@admin.register(Alert)
class AlertAdmin(RoleAdmin):
    list_display = ["kind", "repository_shown", "state", "reason_shown", "first_seen",
                    "last_seen", "resolved_at"]  # fmt: skip
    list_filter = ["state", "kind", "repository"]
    list_select_related = ["repository"]

    @admin.display(description="repository", ordering="repository__name")
    def repository_shown(self, obj):
        return clipped(obj.repository.name) if obj.repository_id else "(installation)"

    @admin.display(description="reason", ordering="reason")
    def reason_shown(self, obj):
        return clipped(obj.reason, wide=True)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ChannelForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=[(e, e.replace("_", " ")) for e in Channel.EVENTS],
        widget=forms.CheckboxSelectMultiple,
    )
    target = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Email: addresses separated by commas. Webhook: its https URL. Apprise: its "
        "URL (ntfy, Slack, Discord, Telegram, Gotify, ...). URLs are stored encrypted and shown "
        "to admins only; everyone else sees their scheme and host.",
    )
    secret = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Webhooks: the HMAC-SHA256 signing secret. Stored encrypted; never shown. "
        "Leave blank to keep the stored one.",
    )

    reveal_target = False  # shows the URL: the admin's get_form sets it for admins

    class Meta:
        model = Channel
        fields = ["name", "kind", "target", "events", "enabled"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        channel = self.instance
        if channel.pk and channel.kind != Channel.Kind.EMAIL:
            # `target` holds the masked URL: an admin edits the URL itself, others see nothing
            self.initial["target"] = ""
            if self.reveal_target:
                try:
                    self.initial["target"] = channel.get_target()
                except vault.VaultError as exc:
                    self.fields["target"].help_text = f"{exc} Give the URL again."

    def clean(self):
        from django.core.validators import validate_email

        data = super().clean()
        kind, target = data.get("kind"), (data.get("target") or "").strip()
        if not target:
            return data
        try:
            if kind == Channel.Kind.WEBHOOK:
                outbound.check_http_url(target, what="webhook URL")
            elif kind == Channel.Kind.APPRISE:
                outbound.check_apprise_url(target)
            elif kind == Channel.Kind.EMAIL:
                for address in target.split(","):
                    if address.strip():
                        validate_email(address.strip())
        except outbound.Refused as exc:
            self.add_error("target", str(exc))
        except forms.ValidationError:
            self.add_error("target", "Give email addresses separated by commas.")
        return data

    def save(self, commit=True):
        channel = super().save(commit=False)
        channel.set_target(self.cleaned_data["target"])
        if self.cleaned_data.get("secret"):
            channel.set_secret(self.cleaned_data["secret"])
        if commit:
            channel.save()
        return channel


@admin.register(Channel)
class ChannelAdmin(RoleAdmin):
    form = ChannelForm
    list_display = ["name", "kind", "target", "enabled", "events", "last_sent_at",
                    "last_error_at", "last_error"]  # fmt: skip
    readonly_fields = ["last_sent_at", "last_error", "last_error_at"]
    actions = ["send_test"]

    def get_fields(self, request, obj=None):
        return ["name", "kind", "target", "events", "secret", "enabled", *self.readonly_fields]

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.reveal_target = has_role(request.user, "admin")
        return form

    @admin.action(description="Send a test message", permissions=["change"])
    def send_test(self, request, queryset):
        for channel in queryset:
            ok = notifications.send_to(
                channel, "test", "[opscenter] test message", "A test message.", {"test": True}
            )
            channel.refresh_from_db()
            if ok and channel.kind == Channel.Kind.EMAIL and notifications.mail_stays_here():
                self.message_user(
                    request,
                    f"{channel.name}: not sent anywhere. Email goes to the worker's console "
                    "until EMAIL_URL names an SMTP server (smtp://user:pass@host:587).",
                    messages.WARNING,
                )
            elif ok:
                self.message_user(request, f"{channel.name}: sent.", messages.SUCCESS)
            else:
                self.message_user(request, f"{channel.name}: {channel.last_error}", messages.ERROR)
