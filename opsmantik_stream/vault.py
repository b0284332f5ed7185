"""Credential vault: libsodium sealed boxes (PyNaCl) under ``OPSMANTIK_VAULT_KEY``.

Anyone with the public key can seal; only the holder of the private key (the uploader
process) can open. The key fingerprint is stored beside each ciphertext so a key change
is detected instead of producing garbage.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import msgspec
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

__all__ = ["Vault", "VaultError", "generate_key", "load_or_create_key"]


class VaultError(Exception):
    """The key is missing, malformed, of another fingerprint, or the box does not open."""


def generate_key() -> str:
    return base64.b64encode(bytes(PrivateKey.generate())).decode()


def load_or_create_key(data_dir: Path) -> str:
    """The key in ``data_dir/vault.key``, created (mode 0600) on first use."""
    path = data_dir / "vault.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


class Vault:
    def __init__(self, key_b64: str) -> None:
        try:
            raw = base64.b64decode(key_b64, validate=True)
            self._private = PrivateKey(raw)
        except Exception:
            raise VaultError("OPSMANTIK_VAULT_KEY: expected base64 of a 32-byte key") from None
        self.fingerprint = hashlib.sha256(bytes(self._private.public_key)).hexdigest()[:16]

    def seal(self, secret: dict[str, object]) -> bytes:
        return SealedBox(self._private.public_key).encrypt(msgspec.json.encode(secret))

    def open(self, sealed: bytes, fingerprint: str) -> dict[str, object]:
        if fingerprint != self.fingerprint:
            raise VaultError("credentials were sealed under another vault key")
        try:
            plain = SealedBox(self._private).decrypt(sealed)
        except CryptoError:
            raise VaultError("credentials do not open with this vault key") from None
        value = msgspec.json.decode(plain)
        if not isinstance(value, dict):
            raise VaultError("sealed credentials are not an object")
        return value
