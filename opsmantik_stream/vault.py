"""Credential vault: libsodium sealed boxes (PyNaCl) under ``OPSMANTIK_VAULT_KEY``.

Anyone with the public key can seal; only the holder of the private key can open. Only
the uploaders open credentials, so only they get the private key: the gateway and the CLI
seal with the public key (``Vault.sealing_only``), partitions and maintenance get neither.
The key fingerprint is stored beside each ciphertext so a key change is detected instead
of producing garbage.

Where the private key lives (docs/security.md): ``OPSMANTIK_VAULT_KEY`` (e.g. from a secret
manager), else the file ``OPSMANTIK_VAULT_KEY_FILE``, by default
``$XDG_CONFIG_HOME/opsmantik/vault.key`` (``~/.config/opsmantik/vault.key``): not in the
data folder beside the database files, so a copy of the database (or of the data folder)
does not carry the key that opens its credentials. The public key sits beside it as
``vault.key.pub``. A key file found at the old place (``data_dir/vault.key``) keeps working,
with a warning to move it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

if TYPE_CHECKING:
    from opsmantik_stream.config import Settings

__all__ = [
    "Vault",
    "VaultError",
    "default_key_file",
    "generate_key",
    "key_file",
    "load_or_create_key",
    "private_key",
    "public_key",
    "public_key_of",
]

log = logging.getLogger(__name__)

_LEGACY_NAME = "vault.key"


class VaultError(Exception):
    """The key is missing, malformed, of another fingerprint, or the box does not open."""


def generate_key() -> str:
    return base64.b64encode(bytes(PrivateKey.generate())).decode()


def public_key_of(private_b64: str) -> str:
    """The base64 public key that belongs to a base64 private key."""
    return Vault(private_b64).public_key_b64


def default_key_file() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "opsmantik" / "vault.key"


def key_file(settings: Settings | Path) -> Path:
    """The private key file of this deployment: ``vault_key_file``, else the default; a key
    still at the old place in the data folder is used (and reported) until it is moved."""
    if not isinstance(settings, Path) and settings.vault_key_file:
        return Path(settings.vault_key_file).expanduser()
    path = default_key_file()
    data_dir = settings if isinstance(settings, Path) else settings.data_path
    legacy = data_dir / _LEGACY_NAME
    if not path.exists() and legacy.exists():
        log.warning(
            "the vault key sits in the data folder beside the database (%s); move it to %s "
            "or set OPSMANTIK_VAULT_KEY_FILE (docs/security.md)",
            legacy,
            path,
        )
        return legacy
    return path


def _write_private(path: Path, content: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(content + "\n")


def load_or_create_key(settings: Settings | Path) -> str:
    """The private key in the key file (see ``key_file``), created (mode 0600, with its
    public key beside it) on first use. ``settings`` may be the data folder (older callers)."""
    path = key_file(settings)
    if path.exists():
        return path.read_text().strip()
    key = generate_key()
    try:
        _write_private(path, key, 0o600)
    except FileExistsError:  # another process created it first
        return path.read_text().strip()
    _write_public(path, key)
    return key


def _write_public(path: Path, private_b64: str) -> None:
    pub = path.with_name(path.name + ".pub")
    try:
        _write_private(pub, public_key_of(private_b64), 0o644)
    except FileExistsError:
        pass


def private_key(settings: Settings) -> str | None:
    """The private key (``vault_key``, else the key file), or None: for the uploaders."""
    if settings.vault_key:
        return settings.vault_key
    path = key_file(settings)
    return path.read_text().strip() if path.exists() else None


def public_key(settings: Settings) -> str | None:
    """The public key (``vault_public_key``, the private key's, or the ``.pub`` file beside
    the key file), or None when the deployment has no vault key yet."""
    if settings.vault_public_key:
        return settings.vault_public_key
    if settings.vault_key:
        return public_key_of(settings.vault_key)
    path = key_file(settings)
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        return pub.read_text().strip()
    if path.exists():  # a key made before public key files existed
        key = path.read_text().strip()
        _write_public(path, key)
        return public_key_of(key)
    return None


class Vault:
    """Seal and open credentials. ``Vault(private)`` does both; ``Vault.sealing_only(public)``
    can only seal (what the gateway and the CLI hold)."""

    def __init__(self, key_b64: str) -> None:
        try:
            raw = base64.b64decode(key_b64, validate=True)
            self._private: PrivateKey | None = PrivateKey(raw)
        except Exception:
            raise VaultError("OPSMANTIK_VAULT_KEY: expected base64 of a 32-byte key") from None
        self._public = self._private.public_key
        self.fingerprint = _fingerprint(self._public)

    @classmethod
    def sealing_only(cls, public_b64: str) -> Vault:
        try:
            public = PublicKey(base64.b64decode(public_b64, validate=True))
        except Exception:
            raise VaultError("vault public key: expected base64 of a 32-byte key") from None
        vault = cls.__new__(cls)
        vault._private = None
        vault._public = public
        vault.fingerprint = _fingerprint(public)
        return vault

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(bytes(self._public)).decode()

    @property
    def can_open(self) -> bool:
        return self._private is not None

    def seal(self, secret: dict[str, object]) -> bytes:
        return SealedBox(self._public).encrypt(msgspec.json.encode(secret))

    def open(self, sealed: bytes, fingerprint: str) -> dict[str, object]:
        if self._private is None:
            raise VaultError("this process holds only the vault's public key")
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


def _fingerprint(public: PublicKey) -> str:
    return hashlib.sha256(bytes(public)).hexdigest()[:16]
