"""The audit trail (SEC-09): every sensitive action leaves exactly one row, on success and on
failure, written after the outcome, with no secret in it; the trail is append-only."""

import json
import os

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from borgapp import jobs
from borgapp.models import Archive, AuditEvent, Job, Repository
from tests.helpers import PASSPHRASE, cli, client_for, write_files

pytestmark = pytest.mark.django_db
NEW_PASSPHRASE = "a brand new passphrase 42"


def run_new_jobs(before: int) -> None:
    for job in Job.objects.filter(pk__gt=before, status="queued").order_by("pk"):
        jobs.run_queued(job.pk)


@pytest.fixture
def world(roots, tmp_path):
    admin = client_for("admin")
    created = admin.post(
        "/api/v1/repositories/",
        {"name": "main", "location": str(roots.repos / "main"), "passphrase": PASSPHRASE,
         "init": True},
        format="json",
    )  # fmt: skip
    jobs.run_queued(created.json()["id"])
    src = write_files(tmp_path / "src", {"a.txt": "alpha"})
    job = admin.post("/api/v1/repositories/main/backup/", {"sources": [str(src)]}, format="json")
    jobs.run_queued(job.json()["id"])
    return {"admin": admin, "src": src, "roots": roots, "archive": Archive.objects.get()}


def archive_url(world, suffix=""):
    return f"/api/v1/archives/{world['archive'].pk}/{suffix}"


CASES = [
    # (what, action, outcome, do)
    ("api backup", "backup", "success",
     lambda w: w["admin"].post("/api/v1/repositories/main/backup/",
                               {"sources": [str(w["src"])], "prefix": "two"}, format="json")),
    ("api backup refused", "backup", "refused",
     lambda w: w["admin"].post("/api/v1/repositories/main/backup/",
                               {"sources": ["relative/path"]}, format="json")),
    ("cli backup fails", "backup", "failure",
     lambda w: (Repository.objects.filter(name="main").update(
         passphrase_encrypted=_encrypted("not it")),
         cli("borg_backup", "main", "--source", w["src"]))),
    ("prune preview", "prune", "success",
     lambda w: w["admin"].post("/api/v1/repositories/main/prune/",
                               {"prefix": "backup", "keep_daily": 1, "dry_run": True},
                               format="json")),
    ("compact", "compact", "success",
     lambda w: w["admin"].post("/api/v1/repositories/main/compact/")),
    ("check", "check", "success", lambda w: w["admin"].post("/api/v1/repositories/main/check/")),
    ("break lock", "break_lock", "success",
     lambda w: w["admin"].post("/api/v1/repositories/main/break-lock/")),
    ("key export", "key_export", "success",
     lambda w: w["admin"].post("/api/v1/repositories/main/key-export/")),
    ("change passphrase", "change_passphrase", "success",
     lambda w: w["admin"].post("/api/v1/repositories/main/change-passphrase/",
                               {"passphrase": NEW_PASSPHRASE}, format="json")),
    ("extract", "extract", "success",
     lambda w: w["admin"].post(archive_url(w, "extract/"),
                               {"target": str(w["roots"].restore / "x")}, format="json")),
    ("extract refused", "extract", "refused",
     lambda w: w["admin"].post(archive_url(w, "extract/"), {"target": "/etc/x"}, format="json")),
    ("list contents (a job)", "contents", "success",
     lambda w: w["admin"].post(archive_url(w, "contents/"))),
    ("delete archive", "delete", "success", lambda w: w["admin"].delete(archive_url(w))),
    ("repository changed", "repository.changed", "success",
     lambda w: w["admin"].patch("/api/v1/repositories/main/", {"append_only": False},
                                format="json")),
    ("repository forgotten", "repository.deleted", "success",
     lambda w: w["admin"].delete("/api/v1/repositories/main/")),
    ("policy created", "retentionpolicy.created", "success",
     lambda w: w["admin"].post("/api/v1/retention-policies/", {"name": "p", "keep_daily": 3},
                               format="json")),
    ("schedule created", "schedule.created", "success",
     lambda w: w["admin"].post("/api/v1/schedules/",
                               {"name": "s", "repositories": ["main"], "operation": "check",
                                "cron": "0 3 * * *"}, format="json")),
    ("cli schedule created", "schedule.created", "success",
     lambda w: cli("borg_schedule", "add", "c", "--repository", "main", "--operation",
                   "compact", "--cron", "0 4 * * *")),
    ("token created", "token.created", "success",
     lambda w: Token.objects.create(user=User.objects.create_user("t1"))),
    ("token revoked", "token.revoked", "success",
     lambda w: Token.objects.filter(user__username__startswith="user-").first().delete()),
    ("bad token", "sign_in", "failure",
     lambda w: _bad_token_client().get("/api/v1/jobs/")),
]  # fmt: skip


def _encrypted(text):
    from borgapp import vault

    return vault.encrypt(text)


def _bad_token_client():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    return client


@pytest.mark.parametrize("what, action, outcome, do", CASES, ids=[c[0] for c in CASES])
def test_each_sensitive_action_leaves_exactly_one_audit_row(world, what, action, outcome, do):
    rows_before = AuditEvent.objects.count()
    last_job = Job.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    do(world)
    run_new_jobs(last_job)
    new = list(AuditEvent.objects.filter(pk__gt=_last_id(rows_before)))
    assert [(e.action, e.outcome) for e in new] == [(action, outcome)], [
        (e.action, e.outcome, e.message) for e in new
    ]
    event = new[0]
    text = json.dumps({f.name: str(getattr(event, f.name)) for f in AuditEvent._meta.fields})
    assert PASSPHRASE not in text and NEW_PASSPHRASE not in text
    assert event.actor and event.source in ("api", "cli", "admin")


def _last_id(count_before):
    ids = list(AuditEvent.objects.order_by("pk").values_list("pk", flat=True))
    return ids[count_before - 1] if count_before else 0


def test_mount_and_umount_each_leave_one_row(world):
    """Who mounted a backup, and when it was unmounted (archive access, SEC-09)."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine")
    admin, point = world["admin"], world["roots"].mnt / "m1"

    def rows_of(do):
        before_job = Job.objects.order_by("-pk").values_list("pk", flat=True).first()
        before = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first()
        response = do()
        run_new_jobs(before_job)
        return response, list(AuditEvent.objects.filter(pk__gt=before).order_by("pk"))

    refused, rows = rows_of(
        lambda: admin.post(archive_url(world, "mount/"), {"mountpoint": "/etc/m"}, format="json")
    )
    assert refused.status_code == 400
    assert [(e.action, e.outcome) for e in rows] == [("mount", "refused")]
    mounted, rows = rows_of(
        lambda: admin.post(archive_url(world, "mount/"), {"mountpoint": str(point)}, format="json")
    )
    try:
        assert mounted.status_code == 202 and os.path.ismount(point)
        assert [(e.action, e.outcome, e.target) for e in rows] == [
            ("mount", "success", f"main::{world['archive'].name}")
        ]
        assert rows[0].params["mountpoint"] == str(point)
    finally:
        unmounted, rows = rows_of(lambda: admin.post(archive_url(world, "umount/")))
    assert unmounted.status_code == 202 and not os.path.ismount(point)
    assert [(e.action, e.outcome) for e in rows] == [("umount", "success")]


def test_admin_sign_in_success_and_failure_and_browsing(world, client):
    User.objects.create_user("ann", password="ann-password-123", is_staff=True)
    client.post("/admin/login/", {"username": "ann", "password": "wrong"})
    client.post("/admin/login/", {"username": "ann", "password": "ann-password-123"})
    signs = list(AuditEvent.objects.filter(action="sign_in").order_by("pk"))
    assert [(e.actor, e.outcome) for e in signs] == [("ann", "failure"), ("ann", "success")]
    assert signs[0].client_address == "127.0.0.1" and signs[0].source == "admin"
    admin = world["admin"]
    jobs.run_queued(admin.post(archive_url(world, "contents/")).json()["id"])
    before = AuditEvent.objects.count()
    assert admin.get(archive_url(world, "contents/")).status_code == 200
    browse = AuditEvent.objects.latest("pk")
    assert AuditEvent.objects.count() == before + 1
    assert (browse.action, browse.actor.endswith("(token)")) == ("browse", True)


def test_the_trail_is_append_only_even_for_a_superuser(world, client):
    event = AuditEvent.objects.first()
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.update(actor="someone else")
    root = User.objects.create_superuser("root", password="x" * 20)
    client.force_login(root)
    assert client.get(f"/admin/borgapp/auditevent/{event.pk}/delete/").status_code == 403
    page = client.get(f"/admin/borgapp/auditevent/{event.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    csv = client.get("/admin/borgapp/auditevent/export.csv?outcome=success")
    body = b"".join(csv.streaming_content).decode()
    assert body.splitlines()[0].startswith("at,actor,")
    assert body.count("\n") == AuditEvent.objects.filter(outcome="success").count() + 1
    api = world["admin"].get("/api/v1/audit/?action=init").json()
    assert [r["action"] for r in api["results"]] == ["init"]
    assert client_for("operator").get("/api/v1/audit/").status_code == 403
