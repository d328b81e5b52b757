"""Values in an admin address that the database cannot even compare (a year past 9999, a time
zone offset PostgreSQL refuses, a NUL character): the admin answers with the list again or a
400 that says what is wrong, never a 500. Runs on SQLite and again on PostgreSQL
(tests/backends.py), where most of these are refused by the server itself."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)  # each query commits, as in production

MODELS = ["job", "archive", "repository", "auditevent", "alert", "schedule", "host",
          "databasesource", "retentionpolicy"]  # fmt: skip


def test_the_admin_answers_values_the_database_refuses_without_a_500(client, repo):
    from borgapp.models import Archive
    from tests.helpers import staff

    archive = Archive.objects.create(repository=repo, name="a1", borg_id="a" * 64)
    client.force_login(staff("admin"))
    client.raise_request_exception = False
    urls = [f"/admin/borgapp/{model}/?{query}" for model in MODELS for query in (
        "q=a%00b", "created_at__year=99999", "start__year=99999&start__month=1",
        "id__exact=99999999999999999999", "created_at__gte=2026-01-01T00:00:00%2B23:59",
        "at__gte=2026-01-01T00:00:00%2B99:00",
    )]  # fmt: skip
    urls += [f"/admin/borgapp/{model}/99999999999999999999/change/" for model in MODELS]
    base = f"/admin/borgapp/archive/{archive.pk}"
    urls += [f"{base}/contents/?q=a%00b", f"{base}/contents/?path=a%00b",
             f"{base}/diff/?other=99999999999999999999", f"{base}/restore/?path=a%00b",
             f"{base}/download/?path=a%00b"]  # fmt: skip
    answers = {url: client.get(url).status_code for url in urls}
    assert not {url: code for url, code in answers.items() if code >= 500}
    year = client.get("/admin/borgapp/job/?created_at__year=99999")
    assert year.status_code == 302 and year["Location"].endswith("/admin/borgapp/job/?e=1")
    assert client.get(year["Location"]).status_code == 200  # the list, without the filter
