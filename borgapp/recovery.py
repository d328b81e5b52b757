"""The recovery kit: every repository's name, location, encryption mode, passphrase and borg
key, with a plain-text sheet per repository for bare borg, in one file sealed with a recovery
passphrase. Written on demand and never stored here (only that it was: RecoveryKitExport);
read back into a fresh install through intake.register, like any other registration.

The file is text: a plain header that says what it is and how to open it without this app,
then the sealed contents in base64, then a checksum line. The header's last line holds the
key derivation's parameters, salt and nonce (JSON); the whole header is the associated data of
the AEAD, so a change to any byte of the header or the body is refused.

- key: Argon2id, 64 MiB, 3 passes, 4 lanes (RFC 9106's second recommended setting), 32 bytes
- cipher: AES-256-GCM, a fresh salt and nonce for every kit
- the checksum (sha256 of every line above it) tells an accidental change or a cut from a
  wrong passphrase; it protects nothing, the AEAD does.
"""

import base64
import binascii
import hashlib
import json
import os
import re
import shlex
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from borgapp import audit, borg, intake, operations, validation
from borgapp.errors import Conflict
from borgapp.models import ENCRYPTION_MODES, Job, RecoveryKitExport, Repository
from borgapp.vault import VaultError

FORMAT = "opscenter-recovery-kit"
VERSION = 1
EXTENSION = ".ockit"
MAGIC = b"OPSCENTER RECOVERY KIT, format 1\n"
BODY_MARK = b"\n--- encrypted kit (base64) ---\n"
END_RE = re.compile(rb"--- end of kit; sha256 of the lines above: ([0-9a-f]{64}) ---\n?")
KDF = {"kdf": "argon2id", "memory_cost": 64 * 1024, "iterations": 3, "lanes": 4}
CIPHER = "aes-256-gcm"
MIN_PASSPHRASE = 12
KEY_EXPORT_DEADLINE = 120  # seconds: an unreachable host fails the export, not hangs it
MAX_KIT_BYTES = 64 * 1024 * 1024
# What an opened header may ask for: the key derivation runs before the header is
# authenticated, so a forged header must not make it take a machine's memory or an hour.
KDF_BOUNDS = {"memory_cost": (8 * 1024, 1024 * 1024), "iterations": (1, 16), "lanes": (1, 16)}
EXPORT_ACTION, IMPORT_ACTION = "recovery_kit.export", "recovery_kit.import"

HEADER = """\
This file is a recovery kit of Ops Center for BorgBackup, written {written} UTC.
It holds, encrypted with the recovery passphrase chosen when it was exported, what is needed
to open the {count} the ops center knew then without it: each one's name,
location, encryption mode, passphrase and borg key, and a plain-text recovery sheet that says
how to list and extract it with borg alone. Keep it off the server it describes.

Into a fresh Ops Center:  manage.py import_recovery_kit THIS-FILE
Without Ops Center: Python 3 and its `cryptography` package (44 or later) open it. Save these
lines as open_kit.py and run `python3 open_kit.py THIS-FILE`; it asks for the recovery
passphrase and prints every repository's recovery sheet.

    import base64, getpass, json, re, sys
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    data = open(sys.argv[1], "rb").read()
    mark = b"\\n--- encrypted kit (base64) ---\\n"
    head, body = data.split(mark, 1)
    p = json.loads(re.search(rb"^params: (.*)$", head, re.M)[1])
    kdf = Argon2id(salt=base64.b64decode(p["salt"]), length=32, iterations=p["iterations"],
                   lanes=p["lanes"], memory_cost=p["memory_cost"])
    key = kdf.derive(getpass.getpass("Recovery passphrase: ").encode())
    sealed = base64.b64decode(b"".join(body.splitlines()[:-1]))
    kit = json.loads(AESGCM(key).decrypt(base64.b64decode(p["nonce"]), sealed, head + mark))
    for repository in kit["repositories"]:
        print(repository["sheet"])

Sealed with Argon2id (memory_cost in KiB) and AES-256-GCM; this header is authenticated
with the contents: a change to any byte of the file is refused.
"""


def how_many(count: int) -> str:
    return f"{count} repositor{'y' if count == 1 else 'ies'}"


class KitError(Exception):
    """A kit that cannot be written or opened; the text is one line, fit for a person, and
    never holds a passphrase."""


@dataclass
class Kit:
    data: bytes
    repositories: list[str]
    created_at: datetime
    sha256: str = field(init=False)

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    @property
    def filename(self) -> str:
        return f"opscenter-recovery-kit-{self.created_at:%Y-%m-%d}{EXTENSION}"


# --- the recovery passphrase and the seal --------------------------------------------------


def check_passphrase(passphrase: str, again: str | None = None) -> str:
    """A recovery passphrase fit to seal a kit (opening takes whatever it is given)."""
    try:
        validation.validate_passphrase(passphrase)
    except validation.InvalidInput as exc:
        raise KitError(f"Recovery passphrase: {exc}") from None
    if len(passphrase) < MIN_PASSPHRASE:
        raise KitError(f"The recovery passphrase needs at least {MIN_PASSPHRASE} characters.")
    if again is not None and again != passphrase:
        raise KitError("The two recovery passphrases differ.")
    return passphrase


def derive_key(passphrase: str, params: dict) -> bytes:
    kdf = Argon2id(
        salt=base64.b64decode(params["salt"]),
        length=32,
        iterations=params["iterations"],
        lanes=params["lanes"],
        memory_cost=params["memory_cost"],
    )
    return kdf.derive(passphrase.encode())


def seal(contents: dict, passphrase: str, *, written: datetime) -> bytes:
    """The kit file: plain header, sealed body, checksum line."""
    params = {
        **KDF,
        "salt": base64.b64encode(os.urandom(16)).decode(),
        "cipher": CIPHER,
        "nonce": base64.b64encode(os.urandom(12)).decode(),
    }
    count = len(contents["repositories"])
    text = HEADER.format(written=f"{written:%Y-%m-%d %H:%M}", count=how_many(count))
    header = MAGIC + text.encode() + b"params: " + json.dumps(params).encode() + BODY_MARK
    plain = json.dumps(contents, indent=1).encode()
    nonce = base64.b64decode(params["nonce"])
    sealed = AESGCM(derive_key(passphrase, params)).encrypt(nonce, plain, header)
    encoded = base64.encodebytes(sealed)  # lines of 76 characters
    above = header + encoded
    end = f"--- end of kit; sha256 of the lines above: {hashlib.sha256(above).hexdigest()} ---\n"
    return above + end.encode()


def unseal(data: bytes, passphrase: str) -> dict:
    """The kit's contents, or KitError saying plainly why not (changes nothing)."""
    header, params, sealed = split(data)
    try:
        key = derive_key(passphrase, params)
        plain = AESGCM(key).decrypt(base64.b64decode(params["nonce"]), sealed, header)
    except InvalidTag:
        raise KitError(
            "The recovery passphrase does not open this kit (or the kit was altered on purpose)."
        ) from None
    return check_contents(plain)


def split(data: bytes) -> tuple[bytes, dict, bytes]:
    """Header (with its closing mark), parameters and sealed bytes of a kit file."""
    if not data.startswith(MAGIC):
        raise KitError("This is not an Ops Center recovery kit (its first line is not theirs).")
    at = data.find(BODY_MARK)
    if at < 0:
        raise KitError("The recovery kit is truncated: its encrypted part is missing.")
    header, rest = data[: at + len(BODY_MARK)], data[at + len(BODY_MARK) :]
    last = rest.rfind(b"\n", 0, len(rest) - 1) + 1
    end = END_RE.fullmatch(rest[last:])
    if end is None:
        raise KitError("The recovery kit is truncated or damaged: its last line is missing.")
    if hashlib.sha256(header + rest[:last]).hexdigest() != end[1].decode():
        raise KitError(
            "The recovery kit is damaged: it changed since it was written (checksum mismatch)."
        )
    try:
        sealed = base64.b64decode(b"".join(rest[:last].split()), validate=True)
    except binascii.Error:
        raise KitError("The recovery kit is damaged: its encrypted part is not base64.") from None
    return header, read_params(header), sealed


def read_params(header: bytes) -> dict:
    lines = [line for line in header.split(b"\n") if line.startswith(b"params: ")]
    try:
        params = json.loads(lines[-1][len(b"params: ") :]) if len(lines) == 1 else None
        fit = (
            isinstance(params, dict)
            and params.get("kdf") == "argon2id"
            and params.get("cipher") == CIPHER
            and len(base64.b64decode(params["salt"], validate=True)) >= 16
            and len(base64.b64decode(params["nonce"], validate=True)) == 12
            and all(
                type(params.get(name)) is int and low <= params[name] <= high
                for name, (low, high) in KDF_BOUNDS.items()
            )
            and params["memory_cost"] >= 8 * params["lanes"]
        )
    except (ValueError, KeyError, TypeError):
        fit = False
    if not fit:
        raise KitError("The recovery kit's header is damaged or of an unknown kind.")
    return params


def check_contents(plain: bytes) -> dict:
    """The opened contents are of the format this code writes (a kit sealed by someone who
    knew the passphrase but not the format is refused before anything is registered)."""
    try:
        contents = json.loads(plain)
    except ValueError:
        contents = None
    entries = contents.get("repositories") if isinstance(contents, dict) else None
    fit = (
        isinstance(entries, list)
        and contents.get("format") == FORMAT
        and contents.get("version") == VERSION
        and all(_fit_entry(entry) for entry in entries)
        and len({entry["name"] for entry in entries}) == len(entries)
    )
    if not fit:
        raise KitError("The recovery kit opened, but its contents are not of a known format.")
    return contents


def _fit_entry(entry) -> bool:
    modes = {mode for mode, _ in ENCRYPTION_MODES}
    texts, optional = ("name", "location", "sheet"), ("passphrase", "key")
    return (
        isinstance(entry, dict)
        and all(isinstance(entry.get(name), str) for name in texts)
        and all(entry.get(name) is None or isinstance(entry[name], str) for name in optional)
        and entry.get("encryption") in modes
        and isinstance(entry.get("append_only"), bool)
    )


# --- export ----------------------------------------------------------------------------------


def export_kit(passphrase: str, *, user=None, deliver=None) -> Kit:
    """Build a kit of every ready repository, hand its bytes to `deliver` (a file, a
    download), then record and audit that it was exported. A failure is audited too."""
    try:
        check_passphrase(passphrase)
        kit = build_kit(passphrase)
        if deliver is not None:
            deliver(kit.data)
    except KitError as exc:
        audit.record(EXPORT_ACTION, outcome="failure", message=exc)
        raise
    RecoveryKitExport.objects.create(
        created_at=kit.created_at,
        user=user if user is not None and user.is_authenticated else None,
        repositories=kit.repositories,
        sha256=kit.sha256,
    )
    audit.record(
        EXPORT_ACTION,
        how_many(len(kit.repositories)),
        outcome="success",
        params={"repositories": kit.repositories, "sha256": kit.sha256},
    )
    return kit


def build_kit(passphrase: str) -> Kit:
    now = timezone.now()
    config = operations.borg_config()
    try:
        version = ".".join(map(str, borg.version(config)))
    except borg.BorgError as exc:
        raise KitError(f"{exc} No kit was written.") from None
    ready = Repository.objects.filter(state=Repository.State.READY).order_by("name")
    entries = [entry_of(repo, config, now, version) for repo in ready]
    contents = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": now.isoformat(),
        "borg_version": version,
        "repositories": entries,
    }
    data = seal(contents, passphrase, written=now)
    return Kit(data=data, repositories=[entry["name"] for entry in entries], created_at=now)


def entry_of(repo: Repository, config: borg.BorgConfig, now: datetime, version: str) -> dict:
    try:
        passphrase = repo.get_passphrase()
    except VaultError:
        raise KitError(
            f"The stored passphrase of repository {repo.name} cannot be decrypted "
            "(BORG_ENCRYPTION_KEY changed?); no kit was written."
        ) from None
    entry = {
        "name": repo.name,
        "location": repo.location,
        "encryption": repo.encryption,
        "append_only": repo.append_only,
        "passphrase": passphrase,
        "key": export_key(repo, config, passphrase),
    }
    entry["sheet"] = sheet(entry, now, version)
    return entry


def export_key(repo: Repository, config: borg.BorgConfig, passphrase: str | None) -> str | None:
    """`borg key export` of the repository (it takes no lock: it runs beside any job)."""
    if repo.encryption == "none":
        return None
    try:
        validation.validate_location(repo.location, settings.REPOSITORY_ROOTS)
        result = borg.run(
            borg.key_export_cmd(repo.location), config, passphrase=passphrase,
            deadline=KEY_EXPORT_DEADLINE,
        )  # fmt: skip
    except (borg.BorgError, validation.InvalidInput) as exc:
        raise KitError(
            f"Could not export the key of repository {repo.name}: {exc} No kit was written."
        ) from None
    return result.stdout


# --- the recovery sheet ------------------------------------------------------------------------


def sheet(entry: dict, now: datetime, version: str) -> str:
    """How to list and extract one repository with borg alone, its secrets at the end."""
    name, location = entry["name"], entry["location"]
    repo = shlex.quote(location)
    lines = [
        f"RECOVERY SHEET of borg repository {name!r}",
        f"Written {now:%Y-%m-%d %H:%M} UTC by Ops Center for BorgBackup (borg {version}).",
        "",
        f"  Location     {location}",
        f"  Encryption   {entry['encryption']}",
        f"  Append-only  {'yes' if entry['append_only'] else 'no'}",
        "",
        "Nothing of Ops Center is needed: borg 1.2.5 or later on the machine you restore on",
        "(pip install borgbackup, or your distribution's package). Every command is plain borg.",
        "",
        *_reach(location),
        "",
        *_passphrase_step(entry),
        "",
        *_key_step(entry, repo),
        "",
        "4. List the archives (oldest first), then the files of one archive:",
        f"       borg list {repo}",
        f"       borg list {repo}::ARCHIVE",
        "",
        "5. Extract. borg writes into the current folder, the stored paths below it:",
        f"       mkdir -p restore-{name} && cd restore-{name}",
        f"       borg extract --list {repo}::ARCHIVE",
        "   Only some paths (as `borg list` shows them, with no leading /):",
        f"       borg extract --list {repo}::ARCHIVE home/alice/documents",
        "   Add --dry-run to see what it would do first. Or browse an archive as a folder:",
        f"       borg mount {repo}::ARCHIVE /mnt/{name}    (then: borg umount /mnt/{name})",
        "",
        "6. To manage it with Ops Center again: `manage.py import_recovery_kit KIT` on a fresh",
        f"   install, or `manage.py borg_import {name} --location {repo}`.",
        *_secrets(entry),
    ]
    return "\n".join(lines) + "\n"


def _reach(location: str) -> list[str]:
    if not validation.is_remote(location):
        return [
            f"1. The repository is the folder {location}. If its disk is now mounted elsewhere,",
            "   use that path in the commands below; if this machine's borg knew it at the old",
            "   path, tell it the move is expected: export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes",
        ]
    match = validation.SSH_RE.match(location)
    user, host, port = match["user"], match["host"], match["port"] or "22"
    return [
        f"1. The repository is reached over ssh, as {user} on {host} (port {port}). This machine",
        "   needs an ssh key that server accepts (the old server's, or a new one added to",
        f"   ~{user}/.ssh/authorized_keys there, `borg serve` forced or not). Point borg at it:",
        '       export BORG_RSH="ssh -i /path/to/private_key"',
        "   If borg is not on the server's PATH, add --remote-path=/path/to/borg to each command.",
    ]


def _passphrase_step(entry: dict) -> list[str]:
    if not entry["passphrase"]:
        return [
            "2. No passphrase: this repository is not protected by one. borg asks once before",
            "   it opens an unencrypted repository it has not seen; say yes beforehand with:",
            "       export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
        ]
    return [
        "2. The passphrase is at the end of this sheet. Hand it to borg without it landing in",
        "   your shell's history (type or paste it, then Enter):",
        "       read -rs BORG_PASSPHRASE && export BORG_PASSPHRASE",
    ]


def _key_step(entry: dict, repo: str) -> list[str]:
    keyfile = f"{entry['name']}.key"
    if not entry["key"]:
        return ["3. No key: this repository has none to import."]
    if entry["encryption"].startswith("keyfile"):
        return [
            "3. The key is NOT in the repository (keyfile mode): it lived in the old server's",
            f"   borg folder. Save the key block at the end of this sheet into {keyfile}",
            "   (from the line BORG_KEY to the end) and import it once:",
            f"       borg key import {repo} {keyfile}",
        ]
    return [
        "3. The key is stored in the repository: nothing to do. The key block at the end of",
        "   this sheet is a copy; only if borg says the repository's key is missing or damaged,",
        f"   save it into {keyfile} and: borg key import {repo} {keyfile}",
    ]


def _secrets(entry: dict) -> list[str]:
    lines = []
    if entry["passphrase"]:
        lines += ["", "Passphrase (the whole line after the colon and one space):"]
        lines += [f"passphrase: {entry['passphrase']}"]
    if entry["key"]:
        lines += ["", f"Key ({entry['name']}.key, from BORG_KEY to the end):"]
        lines += [entry["key"].rstrip()]
    return lines


# --- import --------------------------------------------------------------------------------


@dataclass
class Restored:
    """What became of one repository of a kit: registered, skipped, refused or failed."""

    name: str
    location: str
    status: str
    message: str
    job_id: int | None = None
    archives: int | None = None
    warning: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def import_kit(data: bytes, passphrase: str, *, echo=None) -> list[Restored]:
    """Register every repository of a kit again, with its passphrase (and, for keyfile
    mode, its key put back first). A kit that does not open changes nothing."""
    try:
        contents = unseal(data, passphrase)
    except KitError as exc:
        audit.record(IMPORT_ACTION, outcome="refused", message=exc)
        raise
    config = operations.borg_config()
    done = [restore_one(entry, config, echo) for entry in contents["repositories"]]
    failed = any(item.status in ("refused", "failed") for item in done)
    audit.record(
        IMPORT_ACTION,
        how_many(len(done)),
        outcome="failure" if failed else "success",
        params={status: names_with(done, status) for status in STATUSES},
    )
    return done


STATUSES = ("registered", "skipped", "refused", "failed")


def names_with(done: list[Restored], status: str) -> list[str]:
    return [item.name for item in done if item.status == status]


def restore_one(entry: dict, config: borg.BorgConfig, echo=None) -> Restored:
    name = entry["name"]

    def outcome(status: str, message: str, **more) -> Restored:
        return Restored(name, entry["location"], status, message, **more)

    try:
        location = validation.validate_location(entry["location"], settings.REPOSITORY_ROOTS)
        validation.validate_name(name, "Repository name")
    except validation.InvalidInput as exc:
        return outcome("refused", str(exc))
    existing = Repository.objects.filter(Q(name=name) | Q(location=location)).first()
    if existing is not None:
        if existing.name == name and existing.location == location:
            return outcome("skipped", "already registered here, at the same location")
        if existing.name == name:
            return outcome("refused", f"the name is registered here for {existing.location}")
        return outcome("refused", f"the location is registered here as {existing.name}")
    added = []
    try:
        added = put_key_back(entry, location, config)
        job = intake.register(
            name,
            location,
            entry["passphrase"],
            create=False,
            encryption=entry["encryption"],
            append_only=entry["append_only"],
            trigger=Job.Trigger.CLI,
            inline=True,
            echo=echo,
        )
    except KitError as exc:
        return outcome("failed", str(exc))
    except (validation.InvalidInput, Conflict, VaultError) as exc:
        remove(added)
        return outcome("refused", str(exc))
    if job.status not in Job.OK:
        remove(added)
        return outcome("failed", job.error_message or job.status, job_id=job.pk)
    archives = (job.result or {}).get("archives")
    message = f"registered with {archives} archives" if archives is not None else "registered"
    return outcome(
        "registered",
        message,
        job_id=job.pk,
        archives=archives,
        warning=job.status == Job.Status.WARNING,
    )


def keys_dir(config: borg.BorgConfig) -> Path:
    """Where borg keeps keyfile-mode keys (borg.environment sets HOME and BORG_BASE_DIR)."""
    return Path(config.base_dir) / ".config" / "borg" / "keys"


def put_key_back(entry: dict, location: str, config: borg.BorgConfig) -> list[Path]:
    """`borg key import` a keyfile repository's key into this install's BORG_BASE_DIR;
    the key files it added (to remove again if the registration fails)."""
    if not entry["encryption"].startswith("keyfile"):
        return []
    if not entry["key"]:
        raise KitError("the kit holds no key for this keyfile repository")
    before = set(keys_dir(config).glob("*"))
    try:
        borg.run(borg.key_import_cmd(location, entry["key"]), config)
    except borg.BorgError as exc:
        remove(set(keys_dir(config).glob("*")) - before)
        raise KitError(f"borg key import failed: {exc}") from None
    return sorted(set(keys_dir(config).glob("*")) - before)


def remove(paths) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


# --- the dashboard's reminder --------------------------------------------------------------


def repositories_not_in_a_kit() -> int:
    """Ready repositories no exported kit opens: added (or made ready), or given a new
    passphrase, since the newest export. 0 when the newest kit covers them all."""
    ready = Repository.objects.filter(state=Repository.State.READY)
    last = RecoveryKitExport.objects.order_by("-created_at").first()
    if last is None:
        return ready.count()
    since = last.created_at
    changed = Q(created_at__gt=since) | Q(passphrase_changed_at__gt=since)
    return ready.filter(changed | ~Q(name__in=last.repositories)).count()


def last_export() -> RecoveryKitExport | None:
    return RecoveryKitExport.objects.select_related("user").order_by("-created_at").first()
