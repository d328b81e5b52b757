# Ops Center for BorgBackup: web app (gunicorn) and worker (django-q2) in one image.
#
# Build:   docker build -t opscenter .          (or `make image`, which builds and smoke-tests
#          the image with buildah/podman on a machine with no Docker engine: bin/build-image)
#
# Run the web app (the data volume keeps the SQLite database, secret key and Fernet key):
#   docker run --init -d -p 8000:8000 -v opscenter-data:/data \
#     -e DJANGO_SECRET_KEY=... -e OPSCENTER_MIGRATE=1 opscenter
# Run the worker (same image, same volume/database, other command): `manage.py worker` repairs
# what a crash left (reconcile) and then runs django-q2's `manage.py qcluster`:
#   docker run --init -d -v opscenter-data:/data -e DJANGO_SECRET_KEY=... \
#     opscenter python manage.py worker
# One-off commands:  docker run --rm -it -v opscenter-data:/data opscenter python manage.py ensure_admin
#
# Use `--init` (or tini): Python as PID 1 ignores SIGTERM, so without it `docker stop` waits for
# its timeout and then kills the worker with SIGKILL. `borg mount` needs FUSE in the container
# (`--device /dev/fuse --cap-add SYS_ADMIN`); everything else runs unprivileged.
#
# Environment worth setting: DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS,
# DJANGO_CSRF_TRUSTED_ORIGINS, DJANGO_SECURE_COOKIES=1 behind HTTPS, DATABASE_URL (PostgreSQL:
# psycopg is installed), BORG_ENCRYPTION_KEY, WEB_CONCURRENCY (web processes), WEB_THREADS
# (requests each process runs at once, 16), WEB_CLIENT_TIMEOUT (seconds a client has for a
# request's headers, then its body, and an idle connection stays open: 10),
# OPSCENTER_MIGRATE=1 (run `migrate` before the command).
#
# The web app listens on 0.0.0.0:8000 so that the container's port can be published; its own
# timeouts close slow and idle clients, but in production publish it only to a reverse proxy
# (nginx, Caddy) that terminates TLS and buffers requests, and set OPSCENTER_TRUSTED_PROXIES.
#
# The agent (README: Fleet), a second, small image from the same file: borg and `python -m agent`
# with nothing of the center (no Django, no FUSE; pyfuse3 is left out, so
# `borg mount` is not there):
#   docker build --target agent -t opscenter-agent .
# It runs as root, so that it can read every file it backs up, with the host's folders mounted
# read-only at the same paths that the center's sources name (an archive keeps the path the
# agent saw). Mount folders below the container's own system folders, not over them: /home,
# /srv, /var/lib/app or /etc/nginx are fine, / or /etc or /usr are not (back those up with the
# systemd unit, agent/opscenter-agent.service, instead). The /data volume is the agent's own
# folder (0700): its credential (0600), borg's cache and security folder, its ssh key, and
# ssh's known_hosts for ssh repositories (/data/ssh/known_hosts, see ssh_config.d below).
#   enroll once, with the host's one-time token (`manage.py borg_host add NAME`) on stdin:
#     echo TOKEN | docker run --rm -i -v opscenter-agent:/data opscenter-agent \
#       enroll --center https://opscenter.example --data /data
#   the repository server's host key, once per ssh repository server:
#     docker run --rm -v opscenter-agent:/data --entrypoint sh opscenter-agent \
#       -c 'ssh-keyscan -t ed25519 backup.example >>/data/ssh/known_hosts'
#   then serve the host's jobs (the default command is `run --data /data`); an extract writes
#   only under --restore-root folders (default /data/restore, inside the volume):
#     docker run --init -d --restart unless-stopped --stop-timeout 120 --hostname "$(hostname)" \
#       -v opscenter-agent:/data -v /home:/home:ro -v /srv:/srv:ro -v /var/restore:/var/restore \
#       opscenter-agent run --data /data --restore-root /var/restore
# --stop-timeout: on SIGTERM the agent stops borg politely and tells the center that the job
# was interrupted, which can take longer than the 10 s `docker stop` waits by default.
# --hostname: borg records the host's name in each archive (a container's own is random).

# CI substitutes a local base (localhost/bookworm-python:latest, made with debootstrap) that has
# Debian's python3 in /usr/bin and an EXTERNALLY-MANAGED marker: everything goes into /opt/venv.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- builder: compiles borgbackup (and pyfuse3) from source into /opt/venv ------------------
FROM ${BASE_IMAGE} AS builder

# pip verifies against the system CA bundle, which holds any extra CA that a build machine adds
# to its base image (HTTPS through an intercepting proxy).
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      pkg-config build-essential libssl-dev liblz4-dev libzstd-dev libxxhash-dev \
      libacl1-dev libfuse3-dev python3-dev python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# `python3` is the base image's interpreter (/usr/local/bin on python:*, /usr/bin on Debian):
# the final stage uses the same base, so the venv's python symlink resolves there too.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip

COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt \
 && /opt/venv/bin/borg --version

# --- agent-venv: the builder's venv cut down to borg and what borg itself requires ----------
# Everything else goes: the center's packages (Django, ...), pyfuse3 and its own (the agent never
# mounts), pip. borg is not compiled again: this stage starts from the builder's layers.
FROM builder AS agent-venv
RUN cd /opt/venv/bin \
 && norm() { tr '[:upper:]' '[:lower:]' | sed -E 's/[-_.]+/-/g'; } \
 && keep=" borgbackup " todo=borgbackup \
 && while [ -n "$todo" ]; do \
      deps=$(./pip show $todo | sed -n 's/^Requires: //p' | tr ',' '\n' | norm); todo=""; \
      for d in $deps; do \
        case $keep in *" $d "*) ;; *) keep="$keep$d " todo="$todo $d" ;; esac; \
      done; \
    done \
 && drop=$(./pip list --format=freeze | sed 's/==.*//' | norm | while read -r name; do \
      case "$keep pip " in *" $name "*) ;; *) echo "$name" ;; esac; done) \
 && echo "agent venv keeps:$keep" \
 && ./pip uninstall -y -q $drop \
 && ./python -m pip uninstall -y -q pip \
 && ./borg --version \
 && if ./python -c 'import django' 2>/dev/null; then echo "Django is still there" >&2; exit 1; fi

# --- agent: the fleet's agent, `python -m agent` (usage at the top of this file) --------------
FROM ${BASE_IMAGE} AS agent

ENV DEBIAN_FRONTEND=noninteractive
# The shared libraries borg links against, ssh (and ssh-keygen, for the agent's own key) for ssh
# repositories, CA certificates for an HTTPS center, the database tools a host's database
# sources are dumped and restored with (pg_dump/pg_restore/psql, mariadb-dump/mariadb,
# sqlite3). python3 only if the base lacks one.
RUN command -v python3 >/dev/null || extra=python3; \
    apt-get update \
 && apt-get install -y --no-install-recommends \
      libssl3 liblz4-1 libzstd1 libxxhash0 libacl1 openssh-client ca-certificates \
      postgresql-client mariadb-client sqlite3 $extra \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

# ssh's own known_hosts would be root's home, outside the volume: keep it with the agent's key.
RUN printf '%s\n' '# opscenter-agent: the repository servers this agent trusts live in its volume' \
      'UserKnownHostsFile /data/ssh/known_hosts' >/etc/ssh/ssh_config.d/opscenter-agent.conf \
 && mkdir -m 0700 /data

COPY --from=agent-venv /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BORG_BINARY=/opt/venv/bin/borg

WORKDIR /app
# The agent and the modules of borgapp it imports, none of which imports Django (bin/build-image
# checks that the agent finds every project module it imports, function-level ones included).
COPY agent/ /app/agent/
COPY borgapp/__init__.py borgapp/borg.py borgapp/validation.py borgapp/errors.py \
     borgapp/procs.py borgapp/heldir.py borgapp/inplace.py borgapp/dumps.py \
     borgapp/verifying.py borgapp/itemlist.py /app/borgapp/
RUN python -m agent --help >/dev/null && borg --version

VOLUME ["/data"]
# root: the agent reads every file it backs up (mounted read-only) and writes restores as their
# owners had them.
USER root
ENTRYPOINT ["python", "-m", "agent"]
CMD ["run", "--data", "/data"]

# --- final (the default target, keep it last): the center -------------------------------------
# Runtime libraries, the venv and the source; no compiler.
FROM ${BASE_IMAGE} AS center

ENV DEBIAN_FRONTEND=noninteractive
# Shared libraries borg and pyfuse3 link against, fusermount3 for `borg mount`, ssh for remote
# repositories, the dump and restore tools of database sources (pg_dump/pg_restore/psql,
# mariadb-dump/mariadb, sqlite3). python3 only if the base lacks one (the venv points at the
# base's interpreter).
RUN command -v python3 >/dev/null || extra=python3; \
    apt-get update \
 && apt-get install -y --no-install-recommends \
      libssl3 liblz4-1 libzstd1 libxxhash0 libacl1 libfuse3-3 fuse3 openssh-client \
      postgresql-client mariadb-client sqlite3 ca-certificates $extra \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

RUN groupadd --gid 10001 opscenter \
 && useradd --uid 10001 --gid opscenter --home-dir /data --no-create-home --no-log-init \
      --shell /usr/sbin/nologin opscenter \
 && mkdir -p /data \
 && chown opscenter:opscenter /data \
 && chmod 0700 /data

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPSCENTER_DATA_DIR=/data \
    OPSCENTER_STATIC_ROOT=/app/static \
    BORG_BINARY=/opt/venv/bin/borg \
    DJANGO_ALLOWED_HOSTS=localhost,127.0.0.1,[::1] \
    WEB_CONCURRENCY=2

WORKDIR /app
# Only the application (see .dockerignore: an allow-list).
COPY . /app/

# collectstatic imports the settings, which create the data directory and write a secret key and
# a Fernet key into it: point it at a throwaway directory and delete that, so that no secret made
# at build time ends up in the image.
RUN OPSCENTER_DATA_DIR=/tmp/build-data python manage.py collectstatic --noinput -v0 \
 && rm -rf /tmp/build-data \
 && borg --version

# Declared after the chown so that the volume starts out owned by the app user.
VOLUME ["/data"]
USER opscenter:opscenter
EXPOSE 8000

# A tiny inline entrypoint: with OPSCENTER_MIGRATE=1 it runs `migrate` first, then runs the
# command (gunicorn by default, `python manage.py worker` for the worker).
ENTRYPOINT ["/bin/sh", "-c", "if [ \"${OPSCENTER_MIGRATE:-0}\" = 1 ]; then python manage.py migrate --noinput || exit 1; fi; exec \"$@\"", "opscenter-entrypoint"]
# Settings in opscenter/gunicorn.conf.py: gunicorn keeps the processes, each serves with
# hypercorn's event loop (slow clients hold no thread); the access log leaves out query
# strings (SEC-03).
ENV GUNICORN_BIND=0.0.0.0:8000
CMD ["gunicorn", "opscenter.wsgi", "--config", "opscenter/gunicorn.conf.py"]
