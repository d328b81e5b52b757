"""The agents' own API (`/agent/v1/`): enroll, ask for the host's next job, report progress,
report the outcome. Nothing more: an agent's credential opens no other route (the resource
API does not know it) and no other host's job. Every refusal is the same 401, so a guess
learns nothing (which token exists, which host is revoked); each is audited."""

import json

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from borgapp import audit, fleet
from borgapp.api.errors import body
from borgapp.models import Job

PARK_HEADER = "X-Opscenter-Park"  # read by opscenter/serving.py, never sent to the client


class BadRequest(Exception):
    pass


def _data(request) -> dict:
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The body must be a JSON object.") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.")
    return data


def _address(request) -> str:
    return request.META.get("REMOTE_ADDR", "")


def _host(request):
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Agent":
        raise fleet.NotAuthorized
    return fleet.authenticate(credential.strip(), _address(request))


def agent_view(func):
    """POST only, JSON in and out, no CSRF (no cookie authenticates here), one 401."""

    @csrf_exempt
    @require_POST
    def view(request, *args, **kwargs):
        try:
            return func(request, _data(request), *args, **kwargs)
        except fleet.NotAuthorized:
            audit.record_attempt("agent_auth", request.path, outcome="refused",
                                 message="no such token or credential")  # fmt: skip
            return JsonResponse(body("not_authorized", "Not authorized."), status=401)
        except BadRequest as exc:
            return JsonResponse(body("invalid_input", str(exc)), status=400)
        except fleet.NoSuchJob:
            return JsonResponse(body("not_found", "No such running job of this host."), status=404)

    return view


@agent_view
def enroll(request, data):
    host, credential = fleet.enroll(
        data.get("token"),
        address=_address(request),
        agent_version=str(data.get("agent_version", "")),
        borg_version=str(data.get("borg_version", "")),
        ssh_public_key=str(data.get("ssh_public_key", "")),
    )
    return _no_store(JsonResponse({"host": host.name, "credential": credential}))


@agent_view
def poll(request, data):
    host = _host(request)
    try:
        wait = min(float(data.get("wait", settings.AGENT_POLL_WAIT)), settings.AGENT_POLL_WAIT)
    except (TypeError, ValueError):
        raise BadRequest("wait must be a number of seconds.") from None
    wait = max(wait, 0.0)
    if request.META.get("opscenter.park"):
        # the web server lets the poll wait without a thread, and asks again when it is due
        job = fleet.next_job(host, 0)
        if job is None:
            nothing = HttpResponse(status=204)
            nothing[PARK_HEADER] = f"{fleet.park_key(host)} {wait}"
            return nothing
    else:
        job = fleet.next_job(host, wait)
    handed = fleet.hand_out(job) if job is not None else None
    if handed is None:
        return HttpResponse(status=204)
    return _no_store(JsonResponse({"job": handed}))


@agent_view
def progress(request, data, job_id):
    job = fleet.running_job(_host(request), job_id)
    fields = data.get("fields") if isinstance(data.get("fields"), dict) else {}
    return JsonResponse({"cancel": fleet.progress(job, fields)})


@agent_view
def done(request, data, job_id):
    job = fleet.finish(fleet.running_job(_host(request), job_id), data)
    return JsonResponse({"status": job.status})


@csrf_exempt
@require_POST
def stream(request, job_id):
    """The agent's upload of a download it runs (borg's tar, chunked, read as it arrives):
    relayed to the client that waits for it. 410 when that client has left (the agent stops
    borg), 409 when no client waits for it."""
    try:
        job = fleet.running_job(_host(request), job_id)
        if job.kind != Job.Kind.DOWNLOAD or job.status != Job.Status.RUNNING:
            raise fleet.NoSuchJob(job_id)
        sent = fleet.relay_upload(job, request.META["wsgi.input"])
    except fleet.NotAuthorized:
        audit.record_attempt("agent_auth", request.path, outcome="refused",
                             message="no such token or credential")  # fmt: skip
        return JsonResponse(body("not_authorized", "Not authorized."), status=401)
    except fleet.NoSuchJob:
        return JsonResponse(body("not_found", "No such running download of this host."), 404)
    except fleet.ClientGone:
        return JsonResponse(body("client_gone", "The client left: stop."), status=410)
    except OSError as exc:  # the upload itself broke off (the agent left or stalled)
        return JsonResponse(body("upload_broken", str(exc)), status=400)
    if sent is None:
        return JsonResponse(body("no_client", "No client waits for this download."), 409)
    return JsonResponse({"received": sent})


def _no_store(response):
    response["Cache-Control"] = "no-store"  # a credential or a passphrase is in it
    return response


urlpatterns = [
    path("enroll", enroll),
    path("poll", poll),
    path("jobs/<int:job_id>/progress", progress),
    path("jobs/<int:job_id>/done", done),
    path("jobs/<int:job_id>/stream", stream),
]
