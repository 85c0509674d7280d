"""The state key: encrypts private signing keys at rest in the auth store.

The auth store lives in DATA_DIR; anything that can read that directory (a backup, a copied file, a
database function that reads files) must not get a key that signs tokens. So the private keys are
stored AES-256-GCM encrypted (the `cryptography` package, already a dependency of authlib/joserfc),
bound to their kid, under a key that never lives in DATA_DIR. Where that key comes from, in order:

1. `STATE_ENCRYPTION_KEY` (environment or .env), at least 32 characters;
2. the file `STATE_ENCRYPTION_KEY_FILE`, else the systemd credential `$CREDENTIALS_DIRECTORY/
   state_encryption_key` (`LoadCredential=`), else `~/.config/mssql-mcp/state-encryption.key`
   (`$XDG_CONFIG_HOME` honoured).

If the file does not exist it is generated (mode 600) and a warning names where it lives, so a demo or
a development checkout starts with nothing to configure; a systemd credential is never generated (it is
read-only), and a missing one stops start-up with a message saying what to provide. A key file inside
DATA_DIR is refused: that is exactly where it must not be.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..settings import Settings, SettingsError
from .records import AuthStorage, SigningKeyRow
from .signing import generate_key

log = structlog.get_logger(__name__)

ENCRYPTED_PREFIX = "enc:v1:"
CREDENTIAL_NAME = "state_encryption_key"
MIN_KEY_CHARACTERS = 32
_NONCE_BYTES = 12
_HKDF_INFO = b"mssql-mcp state encryption v1"


class StateKeyError(SettingsError):
    """The state key is missing, unusable, or does not open the stored keys; the message says what to do
    (a SettingsError, so start-up stops with that one line instead of a traceback)."""


def is_encrypted(stored: str) -> bool:
    return stored.startswith(ENCRYPTED_PREFIX)


def is_plain(stored: str) -> bool:
    return not is_encrypted(stored)


@dataclass(frozen=True)
class StateKey:
    aead: AESGCM
    source: str  # where the key came from, for log lines and errors (never the key itself)

    @classmethod
    def from_secret(cls, secret: str, source: str) -> StateKey:
        secret = secret.strip()
        if len(secret) < MIN_KEY_CHARACTERS:
            raise StateKeyError(
                f"{source}: the state encryption key must be at least {MIN_KEY_CHARACTERS} "
                "characters (generate one with: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        # HKDF turns any long secret (a token, a passphrase) into exactly 256 uniform bits.
        raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret.encode("utf-8"))
        return cls(aead=AESGCM(raw), source=source)

    def encrypt(self, kid: str, plaintext: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self.aead.encrypt(nonce, plaintext.encode("utf-8"), kid.encode("utf-8"))
        return ENCRYPTED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, kid: str, stored: str) -> str:
        if not is_encrypted(stored):
            raise StateKeyError(f"signing key {kid} is not encrypted")
        try:
            blob = base64.urlsafe_b64decode(stored[len(ENCRYPTED_PREFIX) :])
            return self.aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], kid.encode("utf-8")).decode("utf-8")
        except (InvalidTag, ValueError):
            raise StateKeyError(
                f"the signing keys in the auth store cannot be opened with the state encryption key "
                f"from {self.source}: it is not the key they were stored with. Restore that key "
                "(or, to start over, delete the signing_keys rows: every issued token stops "
                "working)."
            ) from None


def key_file_path(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """(path of the key file, whether it may be generated when missing)."""
    environ = os.environ if environ is None else environ
    if settings.state_encryption_key_file:
        return Path(settings.state_encryption_key_file).expanduser(), True
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        return Path(credentials) / CREDENTIAL_NAME, False
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "mssql-mcp" / "state-encryption.key", True


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def _generate(path: Path) -> str:
    """Write a new key to `path` atomically (a complete file or none), or read the one another process
    created first."""
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secret + "\n")
        try:
            os.link(partial, path)  # fails if the file exists: never replaces a key in use
        except FileExistsError:
            return path.read_text(encoding="utf-8")
    finally:
        partial.unlink(missing_ok=True)
    log.warning(
        "auth.state_key_generated",
        path=str(path),
        detail="Generated the key that encrypts the signing keys. Keep it (and back it up apart from "
        "DATA_DIR): without it the stored signing keys cannot be used.",
    )
    return secret


def load_state_key(settings: Settings, environ: Mapping[str, str] | None = None) -> StateKey:
    """The configured state key, generating its file on first start where that is allowed."""
    if settings.state_encryption_key:
        return StateKey.from_secret(settings.state_encryption_key, "STATE_ENCRYPTION_KEY")
    path, may_generate = key_file_path(settings, environ)
    if _inside(path, Path(settings.data_dir)):
        raise StateKeyError(
            f"STATE_ENCRYPTION_KEY_FILE: {path} is inside DATA_DIR; keep the key apart from the state it protects"
        )
    try:
        if path.is_file():
            return StateKey.from_secret(path.read_text(encoding="utf-8"), str(path))
        if not may_generate:
            raise StateKeyError(
                f"the systemd credential {CREDENTIAL_NAME} is missing ({path}): add "
                f"LoadCredential={CREDENTIAL_NAME}:/path/to/key to the unit, or set "
                "STATE_ENCRYPTION_KEY"
            )
        return StateKey.from_secret(_generate(path), str(path))
    except OSError as exc:
        raise StateKeyError(
            f"STATE_ENCRYPTION_KEY_FILE: cannot read or create {path} ({exc.strerror}); set "
            "STATE_ENCRYPTION_KEY or STATE_ENCRYPTION_KEY_FILE, or provide the systemd "
            f"credential {CREDENTIAL_NAME}"
        ) from None


def open_signing_keys(store: AuthStorage, state_key: StateKey) -> list[SigningKeyRow]:
    """The signing key rows with their private PEM decrypted, on a synchronous AuthStore: encrypts keys
    a previous version stored in the clear, and creates the first key (encrypted) when there is none."""

    def make() -> tuple[str, str, str]:
        kid, alg, pem = generate_key()
        return kid, alg, state_key.encrypt(kid, pem)

    migrated = store.encrypt_plain_signing_keys(is_plain, state_key.encrypt)
    if migrated:
        log.info("auth.signing_keys_encrypted", count=migrated, key_source=state_key.source)
    rows = store.ensure_signing_key(make)
    return [SigningKeyRow(**{**row, "private_pem": state_key.decrypt(row["kid"], row["private_pem"])}) for row in rows]
