"""The resource API: authentication, roles (SEC-07), one error shape, 202 + Location for
operations, reads from the database only (PERF-01), no secret in any response."""

import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from borgapp import jobs
from borgapp.models import Alert, Archive, Job, Repository, RetentionPolicy, Schedule
from tests.helpers import PASSPHRASE, client_for, worker_runs, write_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client():
    return client_for("admin")


def init_via_api(client, roots, name="main"):
    """Register and initialize a repository through the API, run by a worker."""
    created = client.post(
        "/api/v1/repositories/",
        {"name": name, "location": str(roots.repos / name), "passphrase": PASSPHRASE, "init": True},
        format="json",
    )
    assert created.status_code == 202, created.content
    assert worker_runs(created.json()["id"]).status == "succeeded"
    return created


def test_missing_and_wrong_credentials_get_401_json():
    response = APIClient().get("/api/v1/jobs/")
    assert response.status_code == 401
    assert response.json()["success"] is False
    assert response.json()["error"] == "not_authenticated"
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token nope")
    response = bad.get("/api/v1/jobs/")
    assert response.status_code == 401 and response.json()["error"] == "authentication_failed"


def test_failed_authentication_is_throttled():
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token nope")
    codes = [bad.get("/api/v1/jobs/").status_code for _ in range(12)]
    assert codes[:10] == [401] * 10
    assert codes[10:] == [429, 429]


def test_user_without_a_role_is_denied():
    response = client_for(None).get("/api/v1/jobs/")
    assert response.status_code == 403
    assert response.json()["error"] == "permission_denied"


def make_schedule(repo):
    schedule = Schedule.objects.create(name="nightly", operation="check", cron="0 3 * * *")
    schedule.repositories.add(repo)
    return schedule


# route, method, body, lowest role that may do it
ROUTES = [
    ("/api/v1/repositories/", "get", None, "viewer"),
    ("/api/v1/repositories/main/", "get", None, "viewer"),
    ("/api/v1/archives/", "get", None, "viewer"),
    ("/api/v1/jobs/", "get", None, "viewer"),
    ("/api/v1/retention-policies/", "get", None, "viewer"),
    ("/api/v1/schedules/", "get", None, "viewer"),
    ("/api/v1/alerts/", "get", None, "viewer"),
    ("/api/v1/repositories/main/backup/", "post", {"sources": ["/etc/hostname"]}, "operator"),
    ("/api/v1/repositories/main/check/", "post", {}, "operator"),
    ("/api/v1/repositories/main/compact/", "post", {}, "operator"),
    ("/api/v1/repositories/main/sync/", "post", {}, "operator"),
    ("/api/v1/repositories/main/prune/", "post", {"prefix": "x", "policy": "mine"}, "operator"),
    # ad-hoc keep rules delete what an admin never chose: admins only; a dry run only looks
    ("/api/v1/repositories/main/prune/", "post", {"prefix": "x", "keep_daily": 1}, "admin"),
    (
        "/api/v1/repositories/main/prune/",
        "post",
        {"prefix": "x", "keep_last": 1, "dry_run": True},
        "operator",
    ),
    ("/api/v1/repositories/main/break-lock/", "post", {}, "admin"),
    ("/api/v1/repositories/main/", "patch", {"append_only": False}, "admin"),
    ("/api/v1/retention-policies/", "post", {"name": "p", "keep_daily": 3}, "admin"),
    ("/api/v1/retention-policies/{policy}/", "patch", {"keep_daily": 5}, "admin"),
    ("/api/v1/retention-policies/{policy}/", "delete", None, "admin"),
    (
        "/api/v1/schedules/",
        "post",
        {"name": "s", "repositories": ["main"], "operation": "check", "cron": "0 3 * * *"},
        "admin",
    ),
    ("/api/v1/schedules/{schedule}/", "patch", {"cron": "0 4 * * *"}, "admin"),
    ("/api/v1/schedules/{schedule}/", "delete", None, "admin"),
    ("/api/v1/archives/{archive}/", "get", None, "viewer"),
    ("/api/v1/archives/{archive}/contents/", "post", None, "viewer"),
    ("/api/v1/archives/{archive}/diff/?other={other}", "post", None, "viewer"),
    ("/api/v1/archives/{archive}/extract/", "post", {"target": "{tmp}/restore"}, "operator"),
    ("/api/v1/archives/{archive}/mount/", "post", {"mountpoint": "{tmp}/mnt"}, "operator"),
    ("/api/v1/archives/{archive}/", "delete", None, "admin"),
]


@pytest.mark.parametrize("route, method, payload, needed", ROUTES)
@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_route_by_role(route, method, payload, needed, role, settings, tmp_path):
    settings.REPOSITORY_ROOTS = settings.RESTORE_ROOTS = settings.MOUNT_ROOTS = [tmp_path]
    repo = Repository.objects.create(name="main", location=str(tmp_path / "main"), state="ready")
    names = {
        "archive": Archive.objects.create(repository=repo, name="a1", borg_id="1" * 64).pk,
        "other": Archive.objects.create(repository=repo, name="a2", borg_id="2" * 64).pk,
        "policy": RetentionPolicy.objects.create(name="mine", keep_daily=1).pk,
        "schedule": make_schedule(repo).pk,
        "tmp": tmp_path,
    }
    route = route.format(**names)
    if payload:
        payload = {k: v.format(**names) if isinstance(v, str) else v for k, v in payload.items()}
    response = getattr(client_for(role), method)(route, payload, format="json")
    allowed = ["viewer", "operator", "admin"].index(role) >= ["viewer", "operator", "admin"].index(
        needed
    )
    if allowed:
        assert response.status_code in (200, 201, 202, 204), response.content
    else:
        assert response.status_code == 403, response.content
        assert response.json()["error"] == "permission_denied"
        assert not Job.objects.exists()  # refused: nothing queued


def test_superuser_can_do_everything(settings, tmp_path):
    settings.REPOSITORY_ROOTS = [tmp_path]
    Repository.objects.create(name="main", location=str(tmp_path / "main"), state="ready")
    client = client_for(None, superuser=True)
    assert client.post("/api/v1/repositories/main/break-lock/").status_code == 202


def test_repository_lifecycle_through_the_api(roots, tmp_path, admin_client):
    created = admin_client.post(
        "/api/v1/repositories/",
        {
            "name": "main",
            "location": str(roots.repos / "main"),
            "passphrase": PASSPHRASE,
            "init": True,
        },
        format="json",
    )
    assert created.status_code == 202, created.content
    assert created["Location"].endswith(f"/api/v1/jobs/{created.json()['id']}/")
    assert PASSPHRASE not in created.content.decode()
    assert worker_runs(created.json()["id"]).status == "succeeded"

    detail = admin_client.get("/api/v1/repositories/main/").json()
    assert detail["state"] == "ready" and detail["has_passphrase"] is True
    assert "passphrase" not in detail

    src = write_files(tmp_path / "src", {"a": "alpha", "b/c": "gamma"})
    started = admin_client.post(
        "/api/v1/repositories/main/backup/",
        {"sources": [str(src)], "prefix": "daily"},
        format="json",
    )
    assert started.status_code == 202
    job = worker_runs(started.json()["id"])
    assert job.status == "succeeded"
    watched = admin_client.get(started["Location"]).json()
    assert watched["status"] == "succeeded" and watched["result"]["nfiles"] == 2

    listed = admin_client.get("/api/v1/archives/", {"repository": "main"}).json()
    assert listed["count"] == 1
    assert listed["results"][0]["name"].startswith("daily-")
    assert listed["results"][0]["nfiles"] == 2


def test_bad_input_gets_400_with_one_shape(admin_client, roots):
    Repository.objects.create(name="main", location=str(roots.repos / "main"), state="ready")
    cases = [
        ("/api/v1/repositories/main/backup/", {"sources": []}),
        ("/api/v1/repositories/main/backup/", {"sources": ["relative"]}),
        ("/api/v1/repositories/main/backup/", {"sources": ["/x"], "prefix": "{now}"}),
        ("/api/v1/repositories/main/prune/", {"prefix": "x"}),
        ("/api/v1/repositories/", {"name": "x", "location": "ssh://-oProxyCommand=id@h/p"}),
        ("/api/v1/repositories/", {"name": "x", "location": "/etc/passwd-repo"}),
        ("/api/v1/retention-policies/", {"name": "empty"}),
        (
            "/api/v1/schedules/",
            {"name": "s", "repositories": ["main"], "operation": "backup", "cron": "61 * * * *"},
        ),
    ]
    for route, payload in cases:
        response = admin_client.post(route, payload, format="json")
        assert response.status_code == 400, (route, payload, response.content)
        data = response.json()
        assert data["success"] is False and data["error"] == "invalid_input" and data["message"]
    assert not Job.objects.exists()


def test_unknown_objects_get_404(admin_client):
    for route in ("/api/v1/repositories/nope/", "/api/v1/archives/999/", "/api/v1/jobs/999/"):
        response = admin_client.get(route)
        assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_duplicate_registration_gets_409(admin_client, roots):
    Repository.objects.create(name="main", location=str(roots.repos / "main"), state="ready")
    response = admin_client.post(
        "/api/v1/repositories/",
        {"name": "main", "location": str(roots.repos / "other"), "passphrase": "x"},
        format="json",
    )
    assert response.status_code == 409 and response.json()["error"] == "conflict"


def test_jobs_filter_and_cancel(admin_client, roots):
    repo = Repository.objects.create(name="main", location=str(roots.repos / "main"), state="ready")
    queued = jobs.create("info", repo, trigger="api")
    jobs.create("check", repo, trigger="schedule")
    rows = admin_client.get("/api/v1/jobs/", {"kind": "info"}).json()["results"]
    assert [r["id"] for r in rows] == [queued.pk]
    rows = admin_client.get("/api/v1/jobs/", {"trigger": "schedule"}).json()["results"]
    assert [r["kind"] for r in rows] == ["check"]
    response = admin_client.post(f"/api/v1/jobs/{queued.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert client_for("viewer").post(f"/api/v1/jobs/{queued.pk}/cancel/").status_code == 403


def test_archive_list_filters_order_and_pages_from_the_database(admin_client, roots, monkeypatch):
    repo = Repository.objects.create(name="main", location=str(roots.repos / "main"), state="ready")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    Archive.objects.bulk_create(
        Archive(
            repository=repo,
            name=f"{'db' if i % 2 else 'web'}-{i:04d}",
            start=start + timedelta(hours=i),
            is_checkpoint=(i == 7),
            original_size=i,
        )
        for i in range(250)
    )

    def no_borg(*args, **kwargs):
        raise AssertionError("a request ran a process")

    monkeypatch.setattr(subprocess, "Popen", no_borg)
    page = admin_client.get("/api/v1/archives/").json()
    assert page["count"] == 250 and len(page["results"]) == 100
    assert page["results"][0]["name"] == "db-0249"  # newest first
    assert admin_client.get("/api/v1/archives/", {"prefix": "db-"}).json()["count"] == 125
    assert admin_client.get("/api/v1/archives/", {"checkpoint": "true"}).json()["count"] == 1
    window = admin_client.get(
        "/api/v1/archives/",
        {
            "after": (start + timedelta(hours=10)).isoformat(),
            "before": (start + timedelta(hours=20)).isoformat(),
        },
    ).json()
    assert window["count"] == 10
    ordered = admin_client.get("/api/v1/archives/", {"ordering": "original_size"}).json()
    assert ordered["results"][0]["original_size"] == 0
    assert (
        admin_client.get("/api/v1/archives/", {"page": 3}).json()["results"][-1]["name"]
        == "web-0000"
    )


def test_no_secret_in_any_response(admin_client, roots, tmp_path):
    created = init_via_api(admin_client, roots)
    bodies = [created.content.decode()]
    for route in (
        "/api/v1/repositories/",
        "/api/v1/repositories/main/",
        "/api/v1/jobs/",
        "/api/v1/archives/",
        "/api/schema/",
    ):
        bodies.append(admin_client.get(route).content.decode())
    repo = Repository.objects.get(name="main")
    for text in bodies:
        assert PASSPHRASE not in text
        assert repo.passphrase_encrypted not in text


def test_schema_and_docs_are_served(admin_client):
    schema = admin_client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert "/api/v1/repositories/{name}/backup/" in paths
    assert admin_client.get("/api/docs/").status_code == 200
    response = admin_client.get("/docs")
    assert response.status_code == 302 and response["Location"] == "/api/docs/"


def test_delete_repository_forgets_only_the_registration(admin_client, roots):
    (roots.repos / "main").mkdir()
    Repository.objects.create(name="main", location=str(roots.repos / "main"), state="ready")
    assert admin_client.delete("/api/v1/repositories/main/").status_code == 204
    assert not Repository.objects.exists()
    assert (roots.repos / "main").exists()


def test_key_export_and_change_passphrase_through_the_api(admin_client, roots):
    init_via_api(admin_client, roots)
    operator = client_for("operator")
    assert operator.post("/api/v1/repositories/main/key-export/").status_code == 403
    started = admin_client.post("/api/v1/repositories/main/key-export/")
    assert started.status_code == 202
    job = worker_runs(started.json()["id"])
    assert job.status == "succeeded" and job.secret_payload
    assert "BORG_KEY" not in job.secret_payload  # stored encrypted
    assert "secret_payload" not in admin_client.get(started["Location"]).json()
    assert operator.post(f"{started['Location']}key/").status_code == 403
    # a GET changes nothing (a cross-site link cannot consume the key)
    assert admin_client.get(f"{started['Location']}key/").status_code == 405
    key = admin_client.post(f"{started['Location']}key/")
    assert key.status_code == 200 and key.json()["key"].startswith("BORG_KEY ")
    again = admin_client.post(f"{started['Location']}key/")
    assert again.status_code == 404  # one download only

    changed = admin_client.post(
        "/api/v1/repositories/main/change-passphrase/", {"passphrase": "a new one"}, format="json"
    )
    assert changed.status_code == 202
    assert "a new one" not in changed.content.decode()
    assert worker_runs(changed.json()["id"]).status == "succeeded"
    assert Repository.objects.get(name="main").get_passphrase() == "a new one"


SEED = "/api/v1/backups/borg"
# The guide's routes by role; `async=true` answers 202 as soon as the job is recorded.
SEED_ROUTES = [
    ("get", f"{SEED}/archives?repository_path={{repo}}", None, "viewer"),
    ("get", f"{SEED}/info?async=true&repository_path={{repo}}", None, "viewer"),
    (
        "post",
        f"{SEED}/create?async=true",
        {"archive_name": "a", "source_paths": ["/etc/hostname"], "repository_path": "{repo}"},
        "operator",
    ),
    # the guide's default keep rules are ad-hoc (admins); with an admin's policy, operators
    ("post", f"{SEED}/prune?async=true", {"repository_path": "{repo}"}, "admin"),
    (
        "post",
        f"{SEED}/prune?async=true",
        {"repository_path": "{repo}", "policy": "guide-policy"},
        "operator",
    ),
    ("post", f"{SEED}/compact?async=true&repository_path={{repo}}", None, "operator"),
    ("post", f"{SEED}/check?async=true&repository_path={{repo}}", None, "operator"),
    (
        "post",
        f"{SEED}/extract/a1?async=true",
        {"target_path": "{restore}/t", "repository_path": "{repo}"},
        "operator",
    ),
    (
        "post",
        f"{SEED}/mount?async=true",
        {"archive_name": "a1", "mount_point": "{mnt}/m", "repository_path": "{repo}"},
        "operator",
    ),
    ("delete", f"{SEED}/archives/a1?async=true&repository_path={{repo}}", None, "admin"),
    (
        "post",
        f"{SEED}/init?async=true",
        {"repository_path": "{repos}/new", "passphrase": "x"},
        "admin",
    ),
]


@pytest.mark.parametrize("method, route, payload, needed", SEED_ROUTES)
@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_seed_route_by_role(method, route, payload, needed, role, roots, settings):
    settings.SEED_WAIT = 2  # no worker runs here: never wait long
    repo = Repository.objects.create(name="main", location=str(roots.repos / "main"), state="ready")
    Archive.objects.create(repository=repo, name="a1", created_by_app=True)
    RetentionPolicy.objects.create(name="guide-policy", keep_daily=3)
    places = {
        "repo": repo.location,
        "repos": roots.repos,
        "restore": roots.restore,
        "mnt": roots.mnt,
    }
    url = route.format(**places)
    data = (
        json.loads(
            json.dumps(payload)
            .replace("{repo}", repo.location)
            .replace("{repos}", str(roots.repos))
            .replace("{restore}", str(roots.restore))
            .replace("{mnt}", str(roots.mnt))
        )
        if payload
        else None
    )
    response = getattr(client_for(role), method)(url, data, format="json")
    order = ["viewer", "operator", "admin"]
    if order.index(role) >= order.index(needed):
        assert response.status_code in (200, 202), response.content
    else:
        assert response.status_code == 403, response.content
        assert response.json()["error"] == "permission_denied"
        assert not Job.objects.exists()  # refused: nothing recorded


def test_archive_list_rows_equal_the_detail_serializer(admin_client, settings, tmp_path):
    """The list is built from `.values()` for speed (PERF-01); it must say exactly what the
    serializer says for the same archive, None fields and microseconds included."""
    settings.REPOSITORY_ROOTS = [tmp_path]
    repo = Repository.objects.create(name="main", location=str(tmp_path / "main"), state="ready")
    when = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    Archive.objects.create(
        repository=repo,
        name="full",
        borg_id="a" * 64,
        start=when,
        end=when + timedelta(seconds=3),
        duration=3.0,
        hostname="h",
        username="u",
        comment="c",
        original_size=1000,
        compressed_size=400,
        deduplicated_size=10,
        nfiles=7,
    )
    Archive.objects.create(repository=repo, name="bare", start=None)
    listed = admin_client.get("/api/v1/archives/").json()["results"]
    assert len(listed) == 2
    for row in listed:
        detail = admin_client.get(f"/api/v1/archives/{row['id']}/").json()
        assert row == detail
    full = next(row for row in listed if row["name"] == "full")
    assert full["start"] == "2024-02-29T23:59:58.123456Z"
    assert full["compression_ratio"] == 2.5 and full["deduplication_ratio"] == 100.0


def test_a_nul_byte_in_a_path_is_a_400_not_a_500(admin_client, settings, tmp_path):
    """Found by schemathesis: realpath() raises on a NUL byte; every path is checked first."""
    settings.REPOSITORY_ROOTS = settings.RESTORE_ROOTS = settings.MOUNT_ROOTS = [tmp_path]
    repo = Repository.objects.create(name="main", location=str(tmp_path / "main"), state="ready")
    archive = Archive.objects.create(repository=repo, name="a1", borg_id="1" * 64)
    seed = admin_client.post("/api/v1/backups/borg/umount?mount_point=/mnt/x%00y")
    assert seed.status_code == 400 and "control characters" in seed.json()["message"]
    extract = admin_client.post(
        f"/api/v1/archives/{archive.pk}/extract/", {"target": f"{tmp_path}/r\x00"}, format="json"
    )
    assert extract.status_code == 400 and extract.json()["error"] == "invalid_input"
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)  # PostgreSQL refuses such a value: no test transaction
def test_values_the_database_cannot_hold_are_invalid_input(roots):
    """Found by schemathesis on PostgreSQL (make test's second pass): a NUL character in a
    looked-up name and a time zone offset past PostgreSQL's ±15:59 were 500s there; SQLite
    takes both and finds nothing. Neither is ever a server error."""
    client = client_for("admin")
    Repository.objects.create(name="main", location=str(roots.repos / "main"), state="ready")
    responses = [
        client.post("/api/v1/schedules/", {"name": "s", "repositories": ["ma\x00in"],
                    "operation": "check", "cron": "0 3 * * *"}, format="json"),
        client.get("/api/v1/alerts/", {"after": "2024-07-16T18:48:30+16:01"}),
        client.get("/api/v1/repositories/ma%00in/"),
    ]  # fmt: skip
    for response in responses:
        assert response.status_code in (200, 400, 404), response.content
        if response.status_code != 200:
            assert response.json()["error"] in ("invalid_input", "not_found")
    assert not Schedule.objects.exists()


def test_the_client_behind_a_trusted_proxy_is_the_one_throttled_and_audited(settings):
    from borgapp.models import AuditEvent

    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "bogus entry"]  # the bogus one is ignored
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token nope")
    via_proxy = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "203.0.113.9, 10.9.9.9"}
    codes = [bad.get("/api/v1/jobs/", **via_proxy).status_code for _ in range(11)]
    assert codes == [401] * 10 + [429]
    assert set(AuditEvent.objects.values_list("client_address", flat=True)) == {"203.0.113.9"}
    # another client behind the same proxy is not locked out
    other = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    assert bad.get("/api/v1/jobs/", **other).status_code == 401
    # a forged header from a peer that is not a trusted proxy changes nothing
    forged = {"REMOTE_ADDR": "192.0.2.50", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    assert bad.get("/api/v1/jobs/", **forged).status_code == 401
    assert AuditEvent.objects.filter(client_address="192.0.2.50").count() == 1
    # nor does a malformed chain
    garbage = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "not-an-ip"}
    bad.get("/api/v1/jobs/", **garbage)
    assert AuditEvent.objects.latest("pk").client_address == "10.0.0.2"


def test_alerts_are_readable_and_filterable_by_repository_and_state(tmp_path):
    main = Repository.objects.create(name="main", location=str(tmp_path / "m"), state="ready")
    other = Repository.objects.create(name="other", location=str(tmp_path / "o"), state="ready")
    Alert.objects.create(kind="overdue", repository=main, reason="main is overdue")
    Alert.objects.create(kind="check_age", repository=other, reason="never checked")
    Alert.objects.create(kind="success_rate", repository=main, reason="old", state="resolved")
    Alert.objects.create(kind="worker", reason="No worker has ever ticked")
    api = client_for("viewer")
    firing = api.get("/api/v1/alerts/", {"state": "firing"}).json()
    assert firing["count"] == 3
    of_main = api.get("/api/v1/alerts/", {"repository": "main", "state": "firing"}).json()
    [only] = of_main["results"]
    assert (only["kind"], only["kind_display"], only["repository_name"]) == (
        "overdue", "Last successful backup too old", "main",
    )  # fmt: skip
    assert only["reason"] == "main is overdue" and only["resolved_at"] is None
    worker = api.get("/api/v1/alerts/", {"kind": "worker"}).json()["results"][0]
    assert worker["repository"] is None and worker["repository_name"] is None
    bad = api.get("/api/v1/alerts/", {"state": "burning"})
    assert bad.status_code == 400 and "state" in bad.json()["fields"]
    assert client_for("admin").post("/api/v1/alerts/", {}, format="json").status_code == 405
