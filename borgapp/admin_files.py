"""The admin's pages of the file index: find files (from the dashboard, a repository or an
archive) and the history of one path, whose versions lead to the archive's tree, download,
extract and restore pages."""

import posixpath
from urllib.parse import urlencode

from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from borgapp import filesearch, validation
from borgapp.admin_views import require
from borgapp.models import Archive, Repository
from borgapp.roles import has_role

FILTERS = ("type", "min_size", "max_size", "modified_after", "modified_before",
           "archived_after", "archived_before")  # fmt: skip


def site_search(request, site):
    require(request, "viewer")
    name = request.GET.get("repository", "")
    repository = Repository.objects.filter(name=name).first() if name else None
    return _search(request, site.each_context(request), "Find files", repository=repository)


def repository_search(model_admin, request, pk):
    require(request, "viewer")
    repository = get_object_or_404(Repository, pk=pk)
    context = model_admin.admin_site.each_context(request)
    return _search(request, context, f"Find files in {repository.name}", repository=repository,
                   opts=model_admin.model._meta, object=repository)  # fmt: skip


def archive_search(model_admin, request, pk):
    require(request, "viewer")
    archive = get_object_or_404(Archive.objects.select_related("repository"), pk=pk)
    context = model_admin.admin_site.each_context(request)
    return _search(request, context, f"Find files in {archive.name}", archive=archive,
                   repository=archive.repository, opts=model_admin.model._meta,
                   object=archive)  # fmt: skip


def _search(request, context, title, *, repository=None, archive=None, **more):
    query = request.GET.get("q", "").strip()
    found, error = None, ""
    if query:
        try:
            filters = filesearch.filters_from(request.GET, repository)
            filters.archive = archive
            found = filesearch.search(query, filters)
        except validation.InvalidInput as exc:
            error = str(exc)
    if found is not None:
        for hit in found["hits"]:
            names = sorted({a["repository"] for v in hit["versions"] for a in v["archives"]})
            hit["histories"] = [(name, history_url(name, hit["path"])) for name in names]
            for version in hit["versions"]:
                _shown(version, hit["path"])
    status = found["index"] if found else filesearch.status(repository, archive)
    return TemplateResponse(request, "admin/borgapp/files.html", {
        **context, "title": title, "query": query, "found": found, "error": error,
        "index": status, "scope_repository": repository, "scope_archive": archive,
        "values": {key: request.GET.get(key, "") for key in FILTERS}, **more,
        "types": [("file", "file"), ("folder", "folder"), ("link", "link")],
    })  # fmt: skip


def _shown(version: dict, path: str) -> None:
    """What the pages show of a version beside its raw values."""
    version["newest"] = version["archives"][-1]
    version["folder"] = path if version["type"] == "folder" else posixpath.dirname(path)
    modified = version["modified"]
    version["modified_text"] = f"{modified[:16].replace('T', ' ')} UTC" if modified else "?"


def history_url(repository: str, path: str) -> str:
    return reverse("admin:file_history") + "?" + urlencode({"repository": repository,
                                                           "path": path})  # fmt: skip


def history(request, site):
    require(request, "viewer")
    repository = get_object_or_404(Repository, name=request.GET.get("repository", ""))
    path = request.GET.get("path", "")
    found, error = None, ""
    try:
        found = filesearch.history(repository, path)
    except validation.InvalidInput as exc:
        error = str(exc)
    if found is not None:
        for version in found["versions"]:
            _shown(version, found["path"])
            version["actions"] = _actions(request, version, found["path"])
    return TemplateResponse(request, "admin/borgapp/file_history.html", {
        **site.each_context(request), "title": f"History of {path.strip('/') or '?'}",
        "repository": repository, "path": path, "found": found, "error": error,
    })  # fmt: skip


def _actions(request, version: dict, path: str) -> list[tuple[str, str]]:
    """What can be done with this version, from the newest archive that holds it."""
    newest = version["archives"][-1]
    folder = posixpath.dirname(path) if version["type"] != "folder" else path
    pk = newest["id"]
    links = [("Open its folder", reverse("admin:borgapp_archive_contents", args=[pk]) + "?"
              + urlencode({"path": folder}))]  # fmt: skip
    wanted = "?" + urlencode({"path": path})
    if has_role(request.user, "operator"):
        links.append(("Download", reverse("admin:borgapp_archive_download", args=[pk]) + wanted
                      + ("&format=tar.gz" if version["type"] == "folder" else "")))  # fmt: skip
        links.append(("Extract…", reverse("admin:borgapp_archive_extract", args=[pk]) + wanted))
    if has_role(request.user, "admin"):
        links.append(("Restore in place…", reverse("admin:borgapp_archive_restore", args=[pk])
                      + wanted))  # fmt: skip
    return links
