"""The guide's routes wait for their job without costing the web app its workers (issue 10,
finding 6): against the app as `make run` serves it, over HTTP, with no worker running, so
every job stays queued and every call would wait its whole OPSCENTER_SEED_WAIT."""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.authtoken.models import Token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
CALLS = 12  # more than the 2 web processes x OPSCENTER_SEED_WAITERS (4) places to wait


@pytest.fixture
def long_seed_wait(roots):
    roots.env["OPSCENTER_SEED_WAIT"] = "90"
    roots.env["OPSCENTER_SEED_WAITERS"] = "4"


def call(url, key, data=None, timeout=120):
    """(status, seconds taken) of one request."""
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    request.add_header("Authorization", f"Token {key}")
    request.add_header("Content-Type", "application/json")
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, time.monotonic() - began
    except urllib.error.HTTPError as error:
        return error.code, time.monotonic() - began
    except OSError:
        return None, time.monotonic() - began


def test_waiting_calls_leave_the_app_answering(long_seed_wait, repo, web_server):
    url, _ = web_server
    user = User.objects.create_user("script", password="x" * 20)
    user.groups.add(Group.objects.get(name="operator"))
    key = Token.objects.create(user=user).key
    answers = []

    def check():
        answers.append(
            call(f"{url}/api/v1/backups/borg/check", key, {"repository_path": repo.location})
        )

    threads = [threading.Thread(target=check, daemon=True) for _ in range(CALLS)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    time.sleep(2)
    # the admin and the API still answer at once while the guide's calls wait
    status, took = call(f"{url}/api/v1/repositories/", key, timeout=20)
    assert status == 200 and took < 5, (status, took)
    status, took = call(f"{url}/admin/login/", key, timeout=20)
    assert status == 200 and took < 5, (status, took)
    # calls past the places to wait were told at once where to follow their job
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(answers) < CALLS - 8:
        time.sleep(0.2)
    prompt = [a for a in answers if a[0] == 202 and a[1] < 10]
    assert len(prompt) >= CALLS - 8, answers
