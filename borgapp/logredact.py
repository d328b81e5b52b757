"""A logging filter that masks secrets that slip into log records (SEC-01, SEC-03)."""

import logging
import re

PATTERNS = [
    # query strings and form bodies: passphrase=..., new_passphrase=...
    re.compile(r"((?:passphrase|password|secret|token)[A-Za-z_]*=)[^&\s\"']+", re.IGNORECASE),
    # JSON: "passphrase": "..."
    re.compile(r"(\"[A-Za-z_]*(?:passphrase|password|secret)[A-Za-z_]*\"\s*:\s*\")[^\"]*", re.I),
    # environment-style assignments
    re.compile(r"(BORG_(?:PASSPHRASE|NEW_PASSPHRASE|PASSCOMMAND)=)\S+"),
]


def redact(text: str) -> str:
    for pattern in PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = ()
        return True
