"""The words every layer uses for "this request cannot go on", and the advice shown with each
error code. A leaf: it imports nothing of the project, so any module may raise these.

- InvalidInput: a value given by a person or a client cannot be used (the door answers 400).
- Conflict: the request clashes with what exists, a name or a lock (409); TooMany: a bound on
  waiting work is reached (429).
- Forbidden: the user's role does not allow it (403).
- OperationError: an operation refused to run once started; the job fails with its code.
"""


class InvalidInput(ValueError):
    """A value given by a person or a client that cannot be used."""


class Conflict(Exception):
    """The request clashes with what exists (a name or location already registered)."""


class TooMany(Conflict):
    """A bound on waiting work is reached (the door answers 429): try again later."""


class Forbidden(Exception):
    """The user's role does not allow this request (the door answers 403)."""


class OperationError(Exception):
    """An operation refused to run: `code` for machines, the text for a person."""

    def __init__(self, message: str, code: str = "invalid_request", result: dict | None = None):
        super().__init__(message)
        self.code = code
        self.result = result or {}  # what was found before it failed, kept on the Job


class ClientGone(OperationError):
    """A download's client closed the connection: borg was stopped, nothing failed."""

    def __init__(self, sent: int, why: str = ""):
        super().__init__(
            why or f"The client closed the connection after {sent:,} bytes; borg was stopped.",
            "client_gone",
        )
        self.sent = sent


# What a door catches to answer "refused, nothing changed" with the message.
REFUSED = (InvalidInput, Conflict, Forbidden)

# What a person should do about a job that ended with this error code.
HINTS = {
    "wrong_passphrase": "The stored passphrase does not open the repository. If it was changed "
    "outside the app, store the new one on the repository's page.",
    "lock_timeout": "Something outside the app holds borg's lock. If no borg runs anywhere on "
    "this repository, use the repository's Break lock.",
    "repository_missing": "borg finds no repository at the location: check the path or host.",
    "connection_closed": "The connection to the repository's host dropped; scheduled jobs retry.",
    "disk_full": "The disk holding the repository (or the cache) is full: free space, then run "
    "a compact.",
    "integrity_error": "borg found damaged data. Run a check with verify-data, and keep the "
    "repository's disk under watch.",
    "deadline_exceeded": "The job ran past its deadline (OPSCENTER_JOB_DEADLINE) and was stopped.",
    "interrupted": "The worker running it stopped; the next run continues from a checkpoint.",
    "sources_missing": "Correct the backup's source paths (on its schedule, or in the form), "
    "then run it again.",
    "verify_failed": "Files restored from the newest archive do not match: see the list below.",
}
