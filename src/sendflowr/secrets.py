"""Encryption of credentials at rest (ESP API keys, OAuth tokens, webhook secrets).

cryptography's MultiFernet: authenticated encryption (AES-128-CBC + HMAC-SHA256) with key
rotation built in. `SENDFLOWR_SECRET_KEY` holds one or more Fernet keys, comma-separated,
newest first: new values are encrypted with the first, every listed key still decrypts, and
`rotate()` re-encrypts a value under the newest key. Without a key nothing is stored.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from sendflowr.errors import SendFlowrError


class SecretsUnavailableError(SendFlowrError):
    """No encryption key is configured, so credentials cannot be stored."""

    status = 409
    code = "secret_key_missing"


class SecretDecryptError(SendFlowrError):
    """A stored value does not decrypt with any configured key (the key was removed)."""

    status = 409
    code = "secret_undecryptable"


def parse_keys(raw: str) -> list[Fernet]:
    """Fernet keys from a comma-separated string; ValueError names the bad position."""
    keys: list[Fernet] = []
    for i, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            keys.append(Fernet(part.encode()))
        except ValueError:
            raise ValueError(
                f"key {i + 1} is not a Fernet key (32 url-safe base64-encoded bytes; "
                "make one with `sendflowr secret-key`)"
            ) from None
    if not keys:
        raise ValueError("no key given")
    return keys


def generate_key() -> str:
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts strings; `None` keys means every call refuses."""

    def __init__(self, keys: list[Fernet] | None) -> None:
        self._fernet = MultiFernet(keys) if keys else None

    @classmethod
    def from_string(cls, raw: str | None) -> SecretBox:
        return cls(parse_keys(raw) if raw else None)

    @property
    def available(self) -> bool:
        return self._fernet is not None

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretsUnavailableError(
                "credentials cannot be stored: set SENDFLOWR_SECRET_KEY to a Fernet key "
                "(make one with `sendflowr secret-key`)"
            )
        return self._fernet

    def encrypt(self, plaintext: str) -> str:
        return self._require().encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._require().decrypt(token.encode()).decode()
        except InvalidToken:
            raise SecretDecryptError(
                "a stored credential does not decrypt with the configured keys; was a key "
                "removed from SENDFLOWR_SECRET_KEY before rotation?"
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt under the newest key (after a new key was put first)."""
        try:
            return self._require().rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretDecryptError("a stored credential does not decrypt") from None


def load_secret_box(raw_key: str | None, data_dir: Path, *, create: bool = False) -> SecretBox:
    """The configured key; else the development key file under data_dir (created only when
    `create`, i.e. by `sendflowr run`'s embedded demo); else a box that refuses to store."""
    if raw_key:
        return SecretBox.from_string(raw_key)
    path = data_dir / "secret.key"
    if path.exists():
        return SecretBox.from_string(path.read_text().strip())
    if not create:
        return SecretBox(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return SecretBox.from_string(key)
