"""Findings of the attacker's review (issue 10), each through the door an attacker would use:
the guide's routes and the resource API over the full Django stack with a role's token, the
admin with a staff user's session."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone
from rest_framework.test import APIClient

from borgapp import reconcile
from borgapp.models import (
    Archive,
    ArchiveDiff,
    ArchiveItem,
    AuditEvent,
    Job,
    Repository,
    RetentionPolicy,
)
from tests.helpers import PASSPHRASE, cli, client_for, staff, worker_runs, write_files

pytestmark = pytest.mark.django_db
SEED = "/api/v1/backups/borg"


def backup(repo, roots, name: str, files=None) -> Archive:
    src = write_files(roots.base / f"src-{name}", files or {"a.txt": "alpha", "d/b.txt": "beta"})
    result = cli("borg_backup", repo.name, "--source", src, "--prefix", name)
    assert result.code == 0, result.err
    return repo.archives.filter(name__startswith=name).get()


# --- 1. the guide's routes are no passphrase oracle --------------------------------------------


def test_a_viewer_cannot_tell_a_right_passphrase_from_a_wrong_one(repo, roots):
    backup(repo, roots, "one")
    viewer = client_for("viewer")
    path = repo.location
    none = viewer.get(f"{SEED}/archives", {"repository_path": path})
    right = viewer.get(f"{SEED}/archives", {"repository_path": path, "passphrase": PASSPHRASE})
    wrong = viewer.get(f"{SEED}/archives", {"repository_path": path, "passphrase": "guess-1"})
    header = viewer.get(f"{SEED}/info", {"repository_path": path}, HTTP_X_BORG_PASSPHRASE="guess-2")
    assert none.status_code == right.status_code == wrong.status_code == 200
    assert none.json() == right.json() == wrong.json()
    assert header.status_code == 200 and header.json()["repository_id"] == repo.borg_id
    mismatches = AuditEvent.objects.filter(action="passphrase_mismatch", target=repo.name)
    assert mismatches.count() == 2  # audited, with no passphrase in the row
    assert all("guess" not in str(event.params) + event.message for event in mismatches)


def test_passphrase_mismatches_are_throttled_whatever_the_role(repo, roots):
    viewer = client_for("viewer")
    query = {"repository_path": repo.location}
    for attempt in range(10):
        answer = viewer.get(f"{SEED}/archives", {**query, "passphrase": f"guess-{attempt}"})
        assert answer.status_code == 200
    blocked = viewer.get(f"{SEED}/archives", {**query, "passphrase": PASSPHRASE})
    assert blocked.status_code == 429  # even the right one: the count tells nothing either
    assert blocked.json()["success"] is False
    assert viewer.get(f"{SEED}/archives", query).status_code == 200  # no passphrase: served


def test_an_admin_still_learns_of_a_stale_passphrase(repo):
    admin = client_for("admin")
    answer = admin.get(f"{SEED}/archives", {"repository_path": repo.location, "passphrase": "x"})
    assert answer.status_code == 422 and answer.json()["error"] == "wrong_passphrase"
    operator = client_for("operator")
    started = operator.post(
        f"{SEED}/check?async=true", {"repository_path": repo.location, "passphrase": "x"}
    )
    assert started.status_code == 202  # the stored passphrase is used; nothing told


# --- 2. staff in no role group get nothing -----------------------------------------------------


ADMIN_PAGES = [  # (method, page, the lowest role it opens for)
    ("get", "/admin/", "viewer"),
    ("get", "/admin/borgapp/job/{job}/change/", "viewer"),
    ("get", "/admin/borgapp/archive/{archive}/contents/", "viewer"),
    ("post", "/admin/borgapp/archive/{archive}/contents/", "viewer"),
    ("get", "/admin/borgapp/archive/{archive}/diff/?other={other}", "viewer"),
    ("post", "/admin/borgapp/archive/{archive}/diff/?other={other}", "viewer"),
    ("get", "/admin/borgapp/schedule/cron-preview/?cron=0+3+*+*+*", "viewer"),
    ("get", "/admin/borgapp/repository/", "viewer"),
    ("get", "/admin/borgapp/repository/{repo}/backup/", "operator"),
    ("get", "/admin/borgapp/repository/{repo}/prune/", "operator"),
    ("get", "/admin/borgapp/archive/{archive}/extract/", "operator"),
    ("post", "/admin/borgapp/job/{job}/cancel/", "operator"),
    ("get", "/admin/borgapp/repository/{repo}/key-export/", "admin"),
    ("get", "/admin/borgapp/repository/{repo}/break-lock/", "admin"),
    ("get", "/admin/borgapp/archive/{archive}/delete-archive/", "admin"),
    ("get", "/admin/borgapp/auditevent/", "admin"),
]
ROLES = ["viewer", "operator", "admin"]


@pytest.mark.parametrize("method, page, needed", ADMIN_PAGES)
@pytest.mark.parametrize("role", [None, *ROLES])
def test_admin_page_by_role(client, settings, tmp_path, role, method, page, needed):
    """Staff status alone opens nothing: a staff user in no group is sent to the login page
    from every page (that is how a role is revoked); a lower role gets 403."""
    settings.REPOSITORY_ROOTS = [tmp_path]
    repo = Repository.objects.create(name="main", location=str(tmp_path / "main"), state="ready")
    one = Archive.objects.create(repository=repo, name="one", borg_id="1" * 64)
    two = Archive.objects.create(repository=repo, name="two", borg_id="2" * 64)
    job = Job.objects.create(
        kind="backup", repository=repo, repository_name="main", trigger="api",
        params={"sources": ["/srv/secret-project"]}, status="running",
    )  # fmt: skip
    user = User.objects.create_user("someone", password="x" * 20, is_staff=True)
    if role:
        user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    url = page.format(job=job.pk, archive=one.pk, other=two.pk, repo=repo.pk)
    jobs_before = Job.objects.count()
    answer = getattr(client, method)(url)
    if role is not None and ROLES.index(role) >= ROLES.index(needed):
        assert answer.status_code in (200, 302), (url, answer.status_code)
        if answer.status_code == 302:
            assert not answer["Location"].startswith("/admin/login/"), url
        return
    assert "secret-project" not in answer.content.decode()
    assert Job.objects.count() == jobs_before  # nothing started
    if role is None:
        assert answer.status_code == 302 and answer["Location"].startswith("/admin/login/"), url
    else:
        assert answer.status_code in (302, 403), url
        if answer.status_code == 302:
            assert answer["Location"].startswith("/admin/login/"), url


# --- 4. ad-hoc prune rules are the admin's -----------------------------------------------------


def test_operators_prune_only_with_an_admins_policy(repo, roots):
    backup(repo, roots, "one")
    operator = client_for("operator")
    url = f"/api/v1/repositories/{repo.name}/prune/"
    refused = operator.post(url, {"prefix": "one", "keep_last": 1}, format="json")
    assert refused.status_code == 403 and "retention policy" in refused.json()["message"]
    guide = operator.post(f"{SEED}/prune?async=true", {"repository_path": repo.location})
    assert guide.status_code == 403  # the guide's default rules are ad-hoc too
    assert not Job.objects.filter(kind="prune").exists()
    assert AuditEvent.objects.filter(action="prune", outcome="refused").count() == 2
    # once an admin has defined the guide's rules as a policy, the guide's call uses it
    RetentionPolicy.objects.create(
        name="guide", keep_daily=7, keep_weekly=4, keep_monthly=6, keep_yearly=2
    )
    guide = operator.post(f"{SEED}/prune?async=true", {"repository_path": repo.location})
    assert guide.status_code == 202
    assert Job.objects.get(kind="prune").params["policy"] == "guide"
    named = operator.post(url, {"prefix": "one", "policy": "guide"}, format="json")
    assert named.status_code == 202
    preview = operator.post(url, {"prefix": "one", "keep_last": 1, "dry_run": True}, format="json")
    assert preview.status_code == 202
    admin = client_for("admin")
    assert admin.post(url, {"prefix": "one", "keep_last": 1}, format="json").status_code == 202


# --- 7. listings are bounded and yield to backups ----------------------------------------------


def test_listing_jobs_are_capped_per_user_and_per_repository(repo, roots, settings):
    settings.LISTING_JOBS_PER_USER = 2
    settings.LISTING_JOBS_PER_REPOSITORY = 3
    archives = [backup(repo, roots, f"a{i}") for i in range(5)]
    viewer, other_viewer = client_for("viewer"), APIClient()
    second = User.objects.create_user("viewer-two", password="x" * 20)
    second.groups.add(Group.objects.get(name="viewer"))
    other_viewer.force_authenticate(second)
    url = "/api/v1/archives/{}/contents/"
    assert viewer.post(url.format(archives[0].pk)).status_code == 202
    assert viewer.post(url.format(archives[0].pk)).status_code == 202  # the same job again
    assert viewer.post(url.format(archives[1].pk)).status_code == 202
    capped = viewer.post(url.format(archives[2].pk))
    assert (
        capped.status_code == 429 and "OPSCENTER_LISTING_JOBS_PER_USER" in capped.json()["message"]
    )
    assert other_viewer.post(url.format(archives[2].pk)).status_code == 202
    full = other_viewer.post(url.format(archives[3].pk))
    assert full.status_code == 429 and "REPOSITORY" in full.json()["message"]
    diff = other_viewer.post(f"/api/v1/archives/{archives[3].pk}/diff/?other={archives[4].pk}")
    assert diff.status_code == 429
    assert Job.objects.filter(kind__in=["contents", "diff"]).count() == 3


def test_a_waiting_backup_runs_before_waiting_listings(repo, roots):
    archives = [backup(repo, roots, f"a{i}") for i in range(2)]
    viewer = client_for("viewer")
    listing_ids = [viewer.post(f"/api/v1/archives/{a.pk}/contents/").json()["id"] for a in archives]
    src = write_files(roots.base / "later", {"x": "x"})
    operator = client_for("operator")
    backup_id = operator.post(
        f"/api/v1/repositories/{repo.name}/backup/", {"sources": [str(src)]}, format="json"
    ).json()["id"]
    # a worker handed the first listing finds the backup waiting and lets it go first
    assert worker_runs(listing_ids[0]).status == "queued"
    assert worker_runs(backup_id).status == "succeeded"
    backup_job = Job.objects.get(pk=backup_id)
    assert all(
        Job.objects.get(pk=pk).started_at is None
        or Job.objects.get(pk=pk).started_at > backup_job.started_at
        for pk in listing_ids
    )
    assert worker_runs(listing_ids[0]).status == "succeeded"


def test_stored_listings_stay_under_their_bound(repo, roots, settings):
    small = {f"f{i}": str(i) for i in range(10)}  # 10 files and the directories above
    one, two, three = (backup(repo, roots, name, small) for name in ("one", "two", "three"))
    assert cli("borg_contents", repo.name, one.name).code == 0
    per_archive = ArchiveItem.objects.filter(archive=one).count()
    settings.LISTING_MAX_ROWS = 2 * per_archive + 1
    assert cli("borg_diff", repo.name, one.name, two.name).code == 0
    assert cli("borg_contents", repo.name, two.name).code == 0
    assert cli("borg_contents", repo.name, three.name).code == 0
    stored = ArchiveItem.objects.count() + sum(d.count for d in ArchiveDiff.objects.all())
    assert stored <= settings.LISTING_MAX_ROWS
    assert not ArchiveDiff.objects.exists()  # the diff went first, then the oldest contents
    assert not Archive.objects.get(pk=one.pk).contents_ready
    assert Archive.objects.get(pk=three.pk).contents_ready
    # one listing bigger than the whole bound fails clearly and leaves nothing half-read
    settings.LISTING_MAX_ROWS = per_archive - 1
    result = cli("borg_contents", repo.name, one.name)
    assert result.code == 2 and "OPSCENTER_LISTING_MAX_ROWS" in result.err
    assert not ArchiveItem.objects.filter(archive=one).exists()


# --- 12. a GET changes nothing -----------------------------------------------------------------


def test_a_get_of_the_guide_never_registers_a_repository(repo, roots):
    Repository.objects.all().delete()  # forgotten: only its path is known to the caller
    before = Job.objects.count()
    admin = client_for("admin")
    for route in ("archives", "info"):
        answer = admin.get(
            f"{SEED}/{route}", {"repository_path": repo.location, "passphrase": PASSPHRASE}
        )
        assert answer.status_code == 404 and answer.json()["error"] == "repository_unknown"
        assert "POST" in answer.json()["message"]
    assert not Repository.objects.exists() and Job.objects.count() == before


def test_the_guide_info_route_starts_no_job(repo, roots):
    backup(repo, roots, "one")
    before = Job.objects.count()
    operator = client_for("operator")
    answer = operator.get(f"{SEED}/info", {"repository_path": repo.location})
    assert answer.status_code == 200 and answer.json()["total_size"] > 0
    assert Job.objects.count() == before


def test_an_exported_key_is_bound_to_its_admin_and_expires(repo, settings):
    admin = client_for("admin")
    started = admin.post(f"/api/v1/repositories/{repo.name}/key-export/")
    job_url = started["Location"]
    assert worker_runs(started.json()["id"]).status == "succeeded"
    other_admin = APIClient()
    other = User.objects.create_user("other-admin", password="x" * 20)
    other.groups.add(Group.objects.get(name="admin"))
    other_admin.force_authenticate(other)
    assert other_admin.post(f"{job_url}key/").status_code == 404  # not the one who asked
    assert admin.get(f"{job_url}key/").status_code == 405
    Job.objects.filter(pk=started.json()["id"]).update(
        finished_at=timezone.now() - timedelta(seconds=settings.KEY_DOWNLOAD_TTL + 1)
    )
    assert admin.post(f"{job_url}key/").status_code == 404  # too late
    reconcile.repair()
    assert Job.objects.get(pk=started.json()["id"]).secret_payload == ""  # and wiped


def test_the_admins_key_download_is_bound_to_its_admin(client, repo):
    asker, other = staff("admin"), User.objects.create_user("b", password="x" * 20, is_staff=True)
    other.groups.add(Group.objects.get(name="admin"))
    client.force_login(asker)
    client.post(f"/admin/borgapp/repository/{repo.pk}/key-export/")
    job = Job.objects.get(kind="key_export")
    assert worker_runs(job.pk).status == "succeeded"
    client.force_login(other)
    assert (
        "Download the key"
        not in client.get(f"/admin/borgapp/job/{job.pk}/change/").content.decode()
    )
    refused = client.post(f"/admin/borgapp/job/{job.pk}/key/")
    assert refused.status_code == 302 and not refused.get("Content-Disposition")
    client.force_login(asker)
    page = client.get(f"/admin/borgapp/job/{job.pk}/change/").content.decode()
    assert "Download the key" in page
    key = client.post(f"/admin/borgapp/job/{job.pk}/key/")
    assert key.status_code == 200 and key.content.startswith(b"BORG_KEY ")
    tries = AuditEvent.objects.filter(action="key_download").order_by("pk")
    assert [(e.actor, e.outcome) for e in tries] == [("b", "refused"), (asker.username, "success")]


def test_the_dashboard_shows_how_full_the_listings_are(client, settings):
    settings.LISTING_MAX_ROWS = 1234567
    client.force_login(staff("viewer"))
    page = client.get("/admin/").content.decode()
    assert "Stored file listings: 0 of" in page and "1,234,567 entries" in page
