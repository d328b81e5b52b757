"""The admin's operation pages: forms that validate, then queue a Job through `intake` and
say so with a link ("Backup of repository X queued as job 42"). No page runs borg itself."""

from urllib.parse import quote, urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from borgapp import (
    audit,
    downloads,
    dumps,
    errors,
    filediff,
    fileindex,
    filesearch,
    intake,
    job_summary,
    jobs,
    listing,
    localdir,
    params,
    scheduling,
    validation,
)
from borgapp.models import (
    Archive,
    ArchiveDiffItem,
    ArchiveItem,
    DatabaseSource,
    Host,
    Job,
    Repository,
    RetentionPolicy,
    Schedule,
)
from borgapp.roles import has_role

PAGE = 200


class LinesField(forms.CharField):
    """A list of strings edited as a text box, one per line (blank lines ignored)."""

    def __init__(self, *, rows: int = 3, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(widget=forms.Textarea(attrs={"rows": rows}), strip=False, **kwargs)

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        if isinstance(value, list | tuple):
            return [str(item) for item in value]
        return [line.strip() for line in (value or "").splitlines() if line.strip()]


def require(request, role: str) -> None:
    if not has_role(request.user, role):
        raise PermissionDenied(f"Your role does not allow this ({role} needed).")


def queued(request, job: Job, what: str):
    """Confirm what was started, with a link to watch it; then go to the job page."""
    url = reverse("admin:borgapp_job_change", args=[job.pk])
    if job.status == Job.Status.SKIPPED:
        messages.warning(request, f"{what} skipped: {job.error_message}")
    else:
        messages.success(
            request, format_html('{} queued as <a href="{}">job {}</a>.', what, url, job.pk)
        )
    return redirect(url)


def render(request, model_admin, title: str, template: str, **context):
    base = model_admin.admin_site.each_context(request)
    opts = model_admin.model._meta
    return TemplateResponse(request, template, {**base, "title": title, "opts": opts, **context})


def form_page(request, model_admin, title, form, obj, button, note=""):
    """The common page of an operation: its form, what it will do, one button."""
    return render(
        request, model_admin, title, "admin/borgapp/operation_form.html",
        form=form, object=obj, button=button, note=note,
    )  # fmt: skip


def start_or_error(request, kind, repo, params, what, **kwargs):
    try:
        job = intake.start(
            kind, repo, params, trigger=Job.Trigger.ADMIN, user=request.user, **kwargs
        )
    except errors.REFUSED as exc:
        messages.error(request, f"{what}: {exc}")
        return None
    return queued(request, job, what)


# --- repositories ------------------------------------------------------------------------------


class BackupForm(forms.Form):
    schedule = forms.ModelChoiceField(
        queryset=Schedule.objects.none(),
        required=False,
        help_text="Use a backup schedule's settings; or leave empty and fill in the sources.",
    )
    sources = LinesField(help_text="one path per line")
    excludes = LinesField(
        rows=2, help_text="one pattern per line (borg's pattern syntax, e.g. sh:**/*.tmp)"
    )
    prefix = forms.CharField(
        initial="manual",
        help_text="archives are named PREFIX-TIME in UTC (manual-2026-12-02T02:00:00Z)",
    )
    compression = forms.CharField(initial=params.COMPRESSION)
    databases = forms.ModelMultipleChoiceField(
        queryset=DatabaseSource.objects.all(), required=False, to_field_name="name",
        help_text="database sources dumped into the archive beside the sources",
    )  # fmt: skip

    def __init__(self, repo, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["schedule"].queryset = repo.schedules.filter(operation="backup")

    def clean(self):
        data = super().clean()
        if not data.get("schedule") and not data.get("sources") and not data.get("databases"):
            raise forms.ValidationError(
                "Choose a backup schedule or give at least one source (or a database)."
            )
        return data


def backup(model_admin, request, pk):
    require(request, "operator")
    repo = get_object_or_404(Repository, pk=pk)
    form = BackupForm(repo, request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        schedule = data["schedule"]
        if schedule:
            _, params = scheduling.params_for(schedule)
        else:
            params = {
                "sources": data["sources"],
                "excludes": data["excludes"],
                "prefix": data["prefix"],
                "compression": data["compression"],
                "databases": [source.name for source in data["databases"]],
            }
        response = start_or_error(
            request,
            Job.Kind.BACKUP,
            repo,
            params,
            f"Backup of repository {repo.name}",
            schedule=schedule,
        )
        if response:
            return response
    return form_page(request, model_admin, f"Back up {repo.name} now", form, repo, "Back up now")


class PruneForm(forms.Form):
    prefix = forms.CharField(help_text="the backup set: archives named PREFIX-TIME in UTC")
    policy = forms.ModelChoiceField(queryset=RetentionPolicy.objects.all(), to_field_name="name")
    compact = forms.BooleanField(required=False, initial=True, label="Compact afterwards")


def prune(model_admin, request, pk):
    """First a dry run (its job lists what would be kept and removed), then the prune itself
    from the job page's confirm button."""
    require(request, "operator")
    repo = get_object_or_404(Repository, pk=pk)
    form = PruneForm(request.POST or request.GET or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        confirmed = "confirm" in request.POST
        params = {
            "prefix": data["prefix"],
            "policy": data["policy"].name,
            "compact": data["compact"],
            "dry_run": not confirmed,
        }
        what = f"Prune of {repo.name}" if confirmed else f"Prune preview of {repo.name}"
        response = start_or_error(request, Job.Kind.PRUNE, repo, params, what)
        if response:
            return response
    return form_page(
        request,
        model_admin,
        f"Prune {repo.name}",
        form,
        repo,
        "Preview what would be removed",
        "Nothing is removed yet: the preview job lists what would be kept and removed, "
        "and its page has the button that prunes.",
    )


class CheckForm(forms.Form):
    scope = forms.ChoiceField(choices=Schedule.CheckScope.choices)
    verify_data = forms.BooleanField(required=False, help_text="read and verify all data (slow)")


SIMPLE = {
    "compact": (Job.Kind.COMPACT, "operator", "Compact frees the space of deleted archives."),
    "sync": (
        Job.Kind.SYNC,
        "operator",
        "Reads the archive list from borg and updates the catalog to match it.",
    ),
    "break-lock": (
        Job.Kind.BREAK_LOCK,
        "admin",
        "Removes borg's lock on this repository. Do this only when no borg process anywhere "
        "uses it (a crashed client left the lock behind): breaking the lock of a running borg "
        "can damage the repository.",
    ),
    "check": (Job.Kind.CHECK, "operator", "Checks the repository and its archives."),
    "key-export": (
        Job.Kind.KEY_EXPORT,
        "admin",
        "Exports the repository key. Anyone with the key and the passphrase can read every "
        "backup: the key is offered once on the job's page and then deleted from the server.",
    ),
}


def simple(model_admin, request, pk, name):
    kind, role, explanation = SIMPLE[name]
    require(request, role)
    repo = get_object_or_404(Repository, pk=pk)
    data = request.POST if request.method == "POST" else None
    form = CheckForm(data) if kind == Job.Kind.CHECK else forms.Form(data)
    label = dict(Job.Kind.choices)[kind]
    if request.method == "POST" and form.is_valid():
        params = {}
        if kind == Job.Kind.CHECK:
            params = {
                "scope": form.cleaned_data["scope"],
                "verify_data": form.cleaned_data["verify_data"],
            }
        response = start_or_error(request, kind, repo, params, f"{label} of {repo.name}")
        if response:
            return response
    return form_page(
        request,
        model_admin,
        f"{label}: {repo.name}",
        form,
        repo,
        label,
        explanation,
    )


class PassphraseForm(forms.Form):
    passphrase = forms.CharField(widget=forms.PasswordInput, strip=False, label="New passphrase")
    again = forms.CharField(widget=forms.PasswordInput, strip=False, label="Repeat it")

    def clean(self):
        data = super().clean()
        if data.get("passphrase") != data.get("again"):
            raise forms.ValidationError("The two passphrases differ.")
        return data


def change_passphrase(model_admin, request, pk):
    require(request, "admin")
    repo = get_object_or_404(Repository, pk=pk)
    form = PassphraseForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = intake.change_passphrase(
                repo, form.cleaned_data["passphrase"], trigger=Job.Trigger.ADMIN, user=request.user
            )
        except errors.REFUSED as exc:
            messages.error(request, str(exc))
        else:
            return queued(request, job, f"Passphrase change of {repo.name}")
    return form_page(
        request,
        model_admin,
        f"Change the passphrase of {repo.name}",
        form,
        repo,
        "Change passphrase",
        "borg re-encrypts the key with the new passphrase; the stored one is replaced "
        "only when borg has done so.",
    )


# --- archives ----------------------------------------------------------------------------------


class ExtractForm(forms.Form):
    target = forms.CharField(help_text="a new or empty directory under a restore root")
    paths = LinesField(help_text="paths inside the archive, one per line (empty: everything)")
    strip_components = forms.IntegerField(min_value=0, initial=0)


def extract(model_admin, request, pk):
    require(request, "operator")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    initial = {
        "target": f"{settings.RESTORE_ROOTS[0]}/{archive.name}",
        "paths": request.GET.getlist("path"),
    }
    form = ExtractForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        params = {
            "archive": archive.name,
            "target": data["target"],
            "paths": data["paths"],
            "strip_components": data["strip_components"],
        }
        response = start_or_error(
            request, Job.Kind.EXTRACT, archive.repository, params, f"Extract of {archive.name}"
        )
        if response:
            return response
    return form_page(
        request,
        model_admin,
        f"Extract {archive.name}",
        form,
        archive,
        "Extract",
        f"Restore roots: {', '.join(str(r) for r in settings.RESTORE_ROOTS)}.",
    )


def host_field(help_text: str) -> forms.ModelChoiceField:
    """Where a job runs: this server (empty) or an active host, by its agent."""
    return forms.ModelChoiceField(
        queryset=Host.objects.filter(state=Host.State.ACTIVE).order_by("name"),
        to_field_name="name", required=False, empty_label="this server", help_text=help_text,
    )  # fmt: skip


class HostChoice(forms.Form):
    """A form with a `host` field shown only when there is a host to choose."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.fields["host"].queryset.exists():
            del self.fields["host"]

    def clean(self):
        asked = self.data.get("host")
        if asked and "host" not in self.fields:  # never run on this server what was for a host
            raise forms.ValidationError(f"Host {asked} is not active: nothing was started.")
        return super().clean()

    def chosen_host(self):
        return self.cleaned_data.pop("host", None)


class DownloadForm(HostChoice):
    paths = LinesField(required=True, help_text="paths inside the archive, one per line")
    format = forms.ChoiceField(
        choices=[(f, f) for f in params.DOWNLOAD_FORMATS], initial="auto",
        help_text="auto: one file as itself, a folder or several paths as a plain tar",
    )  # fmt: skip
    host = host_field(
        "where borg reads the repository: this server, or a host that reaches it (its agent "
        "sends the files through this server)"
    )


def download(model_admin, request, pk):
    """Stream files of the archive to the browser: from the tree's links (GET with `path`)
    or from this page's form. A refusal comes back to the page it came from, with why."""
    require(request, "operator")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    paths = request.GET.getlist("path")
    form = DownloadForm(request.POST or None, initial={"paths": paths})
    wanted = None
    host = None
    if request.method == "POST" and form.is_valid():
        host = form.chosen_host()
        wanted = form.cleaned_data["paths"], form.cleaned_data["format"]
    elif request.method == "GET" and paths:
        wanted = paths, request.GET.get("format") or "auto"
    if wanted is not None:
        try:
            streamed = downloads.begin(
                archive, *wanted, trigger=Job.Trigger.ADMIN, user=request.user, host=host,
                lease_wait=settings.DOWNLOAD_LEASE_WAIT,
                client_gone=request.META.get("opscenter.client_gone"),
            )  # fmt: skip
        except (*errors.REFUSED, errors.OperationError) as exc:
            messages.error(request, f"Download from {archive.name}: {exc}")
            if request.method == "GET":
                contents = reverse("admin:borgapp_archive_contents", args=[archive.pk])
                folder = wanted[0][0].rsplit("/", 1)[0] if "/" in wanted[0][0] else ""
                return redirect(f"{contents}?path={quote(folder)}")
        else:
            return downloads.http_response(streamed)
    return form_page(
        request, model_admin, f"Download from {archive.name}", form, archive, "Download",
        "The files stream from borg as it reads them; nothing is kept on the server.",
    )  # fmt: skip


class RestoreForm(HostChoice):
    paths = LinesField(required=True, help_text="paths inside the archive, one per line")
    target = forms.CharField(
        initial="/",
        help_text='"/" puts each path back where it was; another folder stands for "/"',
    )
    policy = forms.ChoiceField(
        choices=[
            ("keep", "keep files that exist (only missing ones are restored)"),
            ("replace", "replace files that exist"),
            ("if-different", "replace files whose type, size, time or link target differ"),
        ],
        initial="keep",
    )
    host = host_field(
        "where to restore: this server, or a host (by its agent, under the folders its "
        "--inplace-root options allow)"
    )


def restore_in_place(model_admin, request, pk):
    """First a preview (its job lists what would be created, replaced, kept, left alone and
    blocked), then the restore from the job page's confirm button."""
    require(request, "admin")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    form = RestoreForm(request.POST or None, initial={"paths": request.GET.getlist("path")})
    if request.method == "POST" and form.is_valid():
        confirmed = "confirm" in request.POST
        host = form.chosen_host()
        params = {"archive": archive.name, **form.cleaned_data, "preview": not confirmed}
        what = "Restore in place" if confirmed else "Restore preview"
        response = start_or_error(
            request, Job.Kind.RESTORE, archive.repository, params, f"{what} of {archive.name}",
            host=host,
        )  # fmt: skip
        if response:
            return response
    roots = ", ".join(str(r) for r in settings.INPLACE_ROOTS)
    note = (
        f"In-place roots: {roots}. Nothing is written yet: the preview job lists what would "
        "happen, and its page has the button that restores."
        if roots
        else "Restores in place are off on this server (list the folders they may write in "
        "with OPSCENTER_INPLACE_ROOTS); a host's agent restores under its --inplace-root folders."
    )
    return form_page(
        request, model_admin, f"Restore {archive.name} in place", form, archive,
        "Preview the restore", note,
    )  # fmt: skip


class RestoreDatabaseForm(forms.Form):
    database = forms.ChoiceField(help_text="the dumps this archive holds (SOURCE/DATABASE)")
    into = forms.CharField(
        required=False,
        help_text="another database name (for SQLite a file's absolute path); empty: the "
        "original, which must be empty unless you replace it",
    )
    force = forms.BooleanField(
        required=False, label="Replace it",
        help_text="restore over a target that holds tables (pg_restore --clean, the dump's "
        "DROP TABLEs, or a new SQLite file in place of the old)",
    )  # fmt: skip

    def __init__(self, choices, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["database"].choices = [(c, c) for c in choices]


def dumps_in(archive: Archive) -> list[str]:
    """SOURCE/DATABASE of each dump in an archive: from its file list if it was read, else
    from the backup job that made it."""
    prefix = f"{dumps.ARCHIVE_ROOT}/"
    found = set()
    if archive.contents_ready:
        paths = listing.contents(archive, path=dumps.ARCHIVE_ROOT).values_list("path", flat=True)
        for path in paths:
            try:
                _, source, database = dumps.parse_archive_path(path)
            except validation.InvalidInput:
                continue
            found.add(f"{source}/{database}")
    made = Job.objects.filter(
        repository=archive.repository, kind=Job.Kind.BACKUP, result__archive_name=archive.name
    ).values_list("result", flat=True)
    for result in made:
        for dump in (result or {}).get("databases", []):
            if dump.get("path", "").startswith(prefix):
                found.add(f"{dump['source']}/{dump['database']}")
    return sorted(found)


def restore_database(model_admin, request, pk):
    """Restore one database dump of the archive into its server: admins only (it writes into
    a database server)."""
    require(request, "admin")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    choices = dumps_in(archive)
    form = RestoreDatabaseForm(choices, request.POST or None)
    if request.method == "POST" and form.is_valid():
        params = {"archive": archive.name, **form.cleaned_data}
        response = start_or_error(
            request, Job.Kind.RESTORE_DATABASE, archive.repository, params,
            f"Restore of {form.cleaned_data['database']} from {archive.name}",
        )  # fmt: skip
        if response:
            return response
    note = (
        "The dump streams from borg into pg_restore, mariadb or sqlite3; nothing is copied to "
        "disk first. A target that holds tables is refused unless you replace it."
        if choices
        else "This archive holds no database dump that is known here (read its file list "
        "to look again)."
    )
    return form_page(request, model_admin, f"Restore a database from {archive.name}", form,
                     archive, "Restore", note)  # fmt: skip


class MountForm(forms.Form):
    mountpoint = forms.CharField(help_text="a new or empty directory under a mount root")


def mount(model_admin, request, pk):
    require(request, "operator")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    existing = archive.repository.mounts.filter(archive_name=archive.name).first()
    if request.method == "POST" and existing is not None and "umount" in request.POST:
        try:
            job = intake.umount(existing.mountpoint, trigger=Job.Trigger.ADMIN, user=request.user)
        except errors.REFUSED as exc:
            messages.error(request, str(exc))
        else:
            return queued(request, job, f"Unmount of {existing.mountpoint}")
    initial = {"mountpoint": f"{settings.MOUNT_ROOTS[0]}/{archive.name}"}
    form = MountForm(request.POST if "umount" not in request.POST else None, initial=initial)
    if request.method == "POST" and "umount" not in request.POST and form.is_valid():
        params = {"archive": archive.name, "mountpoint": form.cleaned_data["mountpoint"]}
        response = start_or_error(
            request, Job.Kind.MOUNT, archive.repository, params, f"Mount of {archive.name}"
        )
        if response:
            return response
    return render(
        request,
        model_admin,
        f"Mount {archive.name}",
        "admin/borgapp/mount.html",
        form=form,
        object=archive,
        mounted=existing,
    )


def contents(model_admin, request, pk):
    """The archive as a folder tree: one directory's children per page, from the database."""
    require(request, "viewer")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    if fileindex.is_indexed(archive):
        return _contents_from_index(model_admin, request, archive)
    if not archive.contents_ready:
        wants_json = "application/json" in request.headers.get("Accept", "")
        if request.method == "POST":
            try:
                job = intake.load_listing(archive, trigger=Job.Trigger.ADMIN, user=request.user)
            except errors.REFUSED as exc:
                if wants_json:
                    return JsonResponse({"error": str(exc)}, status=409)
                messages.error(request, str(exc))
            else:
                if wants_json:  # the page's own script: it stays and follows the job
                    return JsonResponse(
                        {"job": job.pk, "api": reverse("job-detail", args=[job.pk])}
                    )
                return queued(request, job, f"Reading the file list of {archive.name}")
        return render(
            request,
            model_admin,
            f"Contents of {archive.name}",
            "admin/borgapp/contents.html",
            object=archive,
            loaded=False,
        )
    folder = request.GET.get("path", "").strip("/")
    query = request.GET.get("q", "").strip()[:200]
    try:
        if query:  # a search of the folder's whole subtree, by part of a name or path
            items = listing.contents(archive, path=folder).filter(path__icontains=query)
        else:
            items = listing.contents(archive, parent=folder)
        items = items.only("path", "type", "size", "mtime", "mode", "linktarget")
    except validation.InvalidInput as exc:
        messages.error(request, str(exc))
        return redirect(request.path)
    page = Paginator(items, PAGE).get_page(request.GET.get("page"))
    rows = list(page)
    if page.number == 1 and not query:
        # folders borg stored no item for (those above a source like /usr/share/doc) come
        # first, so the tree opens at the archive's real top
        implied = listing.folder_children(archive, folder)
        implied_rows = [ArchiveItem(path=path, type="d") for path in implied]
        rows = sorted(implied_rows + rows, key=lambda item: item.path)
    for item in rows:
        item.name = item.path.rsplit("/", 1)[-1]
    audit.browsed(archive, path=folder, **({"q": query} if query else {}))
    return render(
        request,
        model_admin,
        f"Contents of {archive.name}",
        "admin/borgapp/contents.html",
        object=archive,
        loaded=True,
        entries=archive.contents_count,
        page=page,
        rows=rows,
        folder=folder,
        query=query,
        crumbs=crumbs_of(folder),
        can_extract=has_role(request.user, "operator"),
        download_url=reverse("admin:borgapp_archive_download", args=[archive.pk]),
        restore_url=reverse("admin:borgapp_archive_restore", args=[archive.pk]),
        can_restore=has_role(request.user, "admin"),
    )


def _contents_from_index(model_admin, request, archive: Archive):
    """The tree of an indexed archive, at once (borgapp.fileindex); a search below a folder
    is the archive's Find files page."""
    folder = request.GET.get("path", "").strip("/")
    query = request.GET.get("q", "").strip()[:200]
    if query:  # the index searches the whole archive, by name or path
        target = reverse("admin:borgapp_archive_files", args=[archive.pk])
        return redirect(f"{target}?{urlencode({'q': query})}")
    try:
        page = Paginator(filesearch.folder_entries(archive, folder), PAGE).get_page(
            request.GET.get("page")
        )
    except validation.InvalidInput as exc:
        messages.error(request, str(exc))
        return redirect(request.path)
    rows = [filesearch.entry(folder, row) for row in page]
    if page.number == 1:
        implied = filesearch.implied_folders(archive, folder)
        rows = sorted(implied + rows, key=lambda item: item.path)
    audit.browsed(archive, path=folder)
    return render(
        request, model_admin, f"Contents of {archive.name}", "admin/borgapp/contents.html",
        object=archive, loaded=True, entries=archive.indexed.entries, page=page, rows=rows,
        folder=folder, query="", crumbs=crumbs_of(folder),
        can_extract=has_role(request.user, "operator"),
        download_url=reverse("admin:borgapp_archive_download", args=[archive.pk]),
        restore_url=reverse("admin:borgapp_archive_restore", args=[archive.pk]),
        can_restore=has_role(request.user, "admin"),
    )  # fmt: skip


def diff(model_admin, request, pk):
    require(request, "viewer")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    others = archive.repository.archives.exclude(pk=archive.pk).order_by("-start")[:500]
    other_id = request.GET.get("other") or request.POST.get("other")
    other = others.model.objects.filter(
        pk=int(other_id), repository=archive.repository
    ).first() if (other_id or "").isdigit() else None  # fmt: skip
    context = {"object": archive, "others": others, "other": other}
    if other is not None:
        context["older"], context["newer"] = listing.in_order(archive, other)
        context["change"] = request.GET.get("change", "")
        context["changes"] = ArchiveDiffItem.Change.choices
        try:
            found = filediff.compare(archive, other, change=context["change"])
        except validation.InvalidInput as exc:
            messages.error(request, str(exc))
            return redirect(f"{request.path}?other={other.pk}")
        if found is not None:  # both in the file index: answered from it at once
            context["from_index"] = True
        else:
            found = listing.current_diff(archive, other)
            if settings.FILE_INDEX:  # asking indexes the archive missing, no borg diff
                context["not_indexed"] = [a.name for a in intake.unindexed(archive, other)]
        if found is None and request.method == "POST":
            try:
                job = intake.load_listing(
                    archive, other, trigger=Job.Trigger.ADMIN, user=request.user
                )
            except errors.REFUSED as exc:
                messages.error(request, str(exc))
            else:
                return queued(request, job, f"Comparing {archive.name} with {other.name}")
        if found is not None:
            try:
                items = found if context.get("from_index") else listing.diff_items(
                    found, change=context["change"]
                )  # fmt: skip
            except validation.InvalidInput as exc:
                messages.error(request, str(exc))
                return redirect(f"{request.path}?other={other.pk}")
            audit.browsed(archive, other=other, change=context["change"])
            page = Paginator(items, PAGE).get_page(request.GET.get("page"))
            for row in page:
                row.details = listing.describe(row.changes)
            context["page"] = page
    return render(
        request, model_admin, f"Compare {archive.name}", "admin/borgapp/diff.html", **context
    )


def delete_archive(model_admin, request, pk):
    require(request, "admin")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    if request.method == "POST":
        response = start_or_error(
            request,
            Job.Kind.DELETE,
            archive.repository,
            {"archive": archive.name},
            f"Deletion of archive {archive.name}",
        )
        if response:
            return response
    return form_page(
        request,
        model_admin,
        f"Delete archive {archive.name}?",
        forms.Form(),
        archive,
        "Yes, delete it",
        f"borg deletes {archive.name} from {archive.repository.name}; its space is "
        "freed by the next compact. This cannot be undone.",
    )


# --- jobs --------------------------------------------------------------------------------------


def job_page(model_admin, request, pk):
    require(request, "viewer")
    job = get_object_or_404(Job, pk=pk)
    preview = None
    if job.kind == Job.Kind.PRUNE and job.params.get("dry_run") and job.status == "succeeded":
        preview = {
            "kept": job.result.get("kept", []),
            "pruned": job.result.get("pruned", []),
            "prune_url": reverse("admin:borgapp_repository_prune", args=[job.repository_id]),
        }
    restore = None
    if job.kind == Job.Kind.RESTORE and job.result.get("created"):
        restore = {
            "categories": [
                (name, label, job.result.get(name, {})) for name, label in RESTORE_CATEGORIES
            ],
            "confirm": job.params.get("preview") and job.status == Job.Status.SUCCEEDED,
            "url": reverse("admin:borgapp_archive_restore", args=[_archive_pk(job)]),
            "paths": "\n".join(job.params.get("paths", [])),
        }
    return render(
        request,
        model_admin,
        f"{job.get_kind_display()} job {job.pk}",
        "admin/borgapp/job.html",
        job=job,
        object=job,
        hint=errors.HINTS.get(job.error_code, ""),
        preview=preview,
        restore=restore,
        can_cancel=has_role(request.user, "operator") and not job.is_finished,
        key_waiting=has_role(request.user, "admin") and jobs.key_waiting(job, request.user),
        api_url=reverse("job-detail", args=[job.pk]),
        summary=job_summary.summarize(job),
        expected_bytes=None if job.is_finished else job_summary.expected_bytes(job),
    )


RESTORE_CATEGORIES = [
    ("created", "Created"),
    ("replaced", "Replaced"),
    ("kept", "Kept as they are"),
    ("left_alone", "Left alone (not in the archive)"),
    ("blocked", "Blocked (not safe to write)"),
]


def _archive_pk(job: Job) -> int | None:
    archive = Archive.objects.filter(repository_id=job.repository_id, name=job.archive_name)
    return archive.values_list("pk", flat=True).first()


def restored(model_admin, request, pk):
    """What an extract put on this server's disk, one folder at a time: read from the disk
    (the files may have been moved or changed since), never above the job's own target."""
    require(request, "viewer")
    job = get_object_or_404(Job, pk=pk, kind=Job.Kind.EXTRACT)
    root = (job.result or {}).get("target_path")
    if job.status not in Job.OK or not root:
        raise Http404("This job restored nothing.")
    folder = request.GET.get("path", "").strip("/")
    try:
        entries = localdir.read_folder(root, folder)
    except validation.InvalidInput as exc:
        entries, problem = [], str(exc)
    else:
        problem = ""
    page = Paginator(entries, PAGE).get_page(request.GET.get("page"))
    return render(
        request, model_admin, f"Restored by job {job.pk}", "admin/borgapp/restored.html",
        object=job, job=job, root=root, folder=folder, crumbs=crumbs_of(folder), page=page,
        problem=problem,
    )  # fmt: skip


def crumbs_of(folder: str) -> list[tuple[str, str]]:
    """'a/b' -> [('a', 'a'), ('a/b', 'b')]: each step of a path with its own link."""
    parts = folder.split("/") if folder else []
    return [("/".join(parts[: i + 1]), part) for i, part in enumerate(parts)]


def cancel_job(model_admin, request, pk):
    require(request, "operator")
    job = get_object_or_404(Job, pk=pk)
    if request.method == "POST":
        jobs.cancel(job)
        messages.success(request, f"Cancel of job {job.pk} requested.")
    return redirect(reverse("admin:borgapp_job_change", args=[job.pk]))


def download_key(model_admin, request, pk):
    require(request, "admin")
    job = get_object_or_404(Job, pk=pk)
    if request.method != "POST":
        return redirect(reverse("admin:borgapp_job_change", args=[job.pk]))
    key = jobs.take_exported_key(job, request.user)
    if key is None:
        messages.error(
            request,
            "No exported key waits here for you: a key is offered once, to the admin who "
            "exported it, for a limited time. Export it again.",
        )
        return redirect(reverse("admin:borgapp_job_change", args=[job.pk]))
    response = HttpResponse(key, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{job.repository_name}.key"'
    response["Cache-Control"] = "no-store"
    return response


# --- schedules ---------------------------------------------------------------------------------

RUN_FORMAT = "%Y-%m-%d %H:%M %Z"


def cron_preview(model_admin, request):
    """What a cron expression means and when it would run next, for the schedule form to show
    while it is typed (nothing is saved)."""
    require(request, "viewer")
    cron, zone = request.GET.get("cron", ""), request.GET.get("timezone") or "UTC"
    try:
        validation.validate_cron(cron)
        validation.validate_timezone(zone)
    except validation.InvalidInput as exc:
        return JsonResponse({"ok": False, "error": str(exc)})
    probe = Schedule(cron=cron, timezone=zone, enabled=True)
    return JsonResponse(
        {
            "ok": True,
            "description": validation.describe_cron(cron),
            "next": [run.strftime(RUN_FORMAT) for run in scheduling.upcoming(probe)],
        }
    )
