"""Passphrases at rest: MultiFernet under BORG_ENCRYPTION_KEY (SEC-02)."""

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


class VaultError(Exception):
    """A stored secret could not be decrypted with any configured key."""


@cache
def _fernet() -> MultiFernet:
    keys = settings.BORG_ENCRYPTION_KEYS
    if not keys:
        raise VaultError("No encryption key configured (BORG_ENCRYPTION_KEY).")
    try:
        return MultiFernet([Fernet(key.strip().encode()) for key in keys])
    except ValueError:
        raise VaultError(
            "BORG_ENCRYPTION_KEY holds a value that is not a Fernet key "
            "(32 url-safe base64-encoded bytes)."
        ) from None


@receiver(setting_changed)
def _reset(setting, **kwargs):
    if setting == "BORG_ENCRYPTION_KEYS":
        _fernet.cache_clear()


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise VaultError(
            "A stored passphrase cannot be decrypted with the configured BORG_ENCRYPTION_KEY."
        ) from None


def rotate(token: str) -> str:
    """Re-encrypt a token under the first (newest) key."""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise VaultError(
            "A stored passphrase cannot be decrypted with the configured BORG_ENCRYPTION_KEY."
        ) from None
