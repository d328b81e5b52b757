"""Issue 10, finding 10: the audit CSV export never hands a spreadsheet a formula. A user name
typed at a failed sign-in is stored as typed; exported, a cell that starts with = + - @ (or a
tab or CR) is prefixed with a single quote, and every other cell is left as it is."""

import csv
import io

import pytest

from borgapp.models import AuditEvent
from tests.helpers import staff

pytestmark = pytest.mark.django_db


def event(actor, **more):
    return AuditEvent.objects.create(
        actor=actor, source="admin", client_address="127.0.0.1", action="sign_in",
        outcome="failure", **more,
    )  # fmt: skip


def test_the_audit_export_neutralises_formulas(client):
    event('=HYPERLINK("http://x")', target="t1")
    event("-2+3", target="t2")
    event("+1", target="t3", message="@SUM(A1:A9)")
    event("\tcmd", target="t4", message="\r=1")
    event("ann", target="main::backup-2024", message="a - b = c", params={"k": "=v"})
    client.force_login(staff("admin"))
    response = client.get("/admin/borgapp/auditevent/export.csv")
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    rows = {row["target"]: row for row in csv.DictReader(io.StringIO(body))}
    assert rows["t1"]["actor"] == '\'=HYPERLINK("http://x")'
    assert rows["t2"]["actor"] == "'-2+3"
    assert rows["t3"]["actor"] == "'+1" and rows["t3"]["message"] == "'@SUM(A1:A9)"
    assert rows["t4"]["actor"] == "'\tcmd" and rows["t4"]["message"] == "'\r=1"
    ordinary = rows["main::backup-2024"]
    assert ordinary["actor"] == "ann" and ordinary["message"] == "a - b = c"
    assert ordinary["client_address"] == "127.0.0.1" and ordinary["outcome"] == "failure"
    assert ordinary["params"] == "{'k': '=v'}" and ordinary["job_id_ref"] == ""
    assert ordinary["at"][:4].isdigit()  # dates as before
