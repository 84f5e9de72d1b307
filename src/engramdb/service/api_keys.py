"""API keys: creation, lookup, revocation and rotation.

A key is ``edb_`` followed by 32 random bytes (URL-safe base64). Only its
SHA-256 digest is stored, through the engine's metadata interface
(:class:`~engramdb.engine.metadata.Metadata`, namespace ``api_keys``) under its
key id, the first 16 hex digits of that digest: lookup is one point read, and a
listing never exposes anything that helps recover a key. Digests are compared
with :func:`hmac.compare_digest`.

The bootstrap admin key (``ENGRAMDB_ADMIN_KEY`` or ``server.admin_key_file``)
is never stored; the service keeps only its digest in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from engramdb import validation
from engramdb.config import Settings
from engramdb.engine.metadata import Metadata
from engramdb.errors import InvalidArgument, NotFound
from engramdb.service.context import ROLES, Role

KEY_PREFIX = "edb_"
_NAMESPACE = "api_keys"  # of the engine's metadata rows
ADMIN_KEY_ENV = "ENGRAMDB_ADMIN_KEY"
METRICS_KEY_ENV = "ENGRAMDB_METRICS_KEY"
MIN_BOOTSTRAP_KEY_CHARS = 16
DEFAULT_ROTATION_GRACE_SECONDS = 86400.0


def digest(secret: str) -> str:
    """Hex SHA-256 of a key (keys are high-entropy, so no salt or KDF is needed)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_id_of(hex_digest: str) -> str:
    return hex_digest[:16]


def same_digest(a: str, b: str) -> bool:
    """Constant-time comparison, so response timing does not leak digest prefixes."""
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass
class ApiKey:
    """A stored key (without its secret)."""

    id: str
    hash: str
    tenant: str
    role: Role
    collections: list[str] | None
    expires_at: float | None
    revoked: bool
    name: str | None
    created_at: float
    revoked_at: float | None = None
    replaced_by: str | None = None

    def expired(self, now: float) -> bool:
        # Fail safe: an expiry that is not a finite number (stored before expiries were
        # validated, e.g. NaN, which compares false with everything) counts as expired.
        exp = self.expires_at
        return exp is not None and not (math.isfinite(exp) and exp > now)

    def public_expires_at(self) -> float | None:
        """``expires_at`` as shown to users: a non-finite stored value (an expired key) is shown as 0."""
        exp = self.expires_at
        return exp if exp is None or math.isfinite(exp) else 0.0

    def info(self) -> dict[str, Any]:
        """The public description of the key (never the digest); JSON-safe."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "role": self.role,
            "collections": self.collections,
            "expires_at": self.public_expires_at(),
            "revoked": self.revoked,
            "name": self.name,
            "created_at": self.created_at,
            "replaced_by": self.replaced_by,
        }


def check_key_fields(role: str, tenant: str, collections: list[str] | None, name: str | None) -> None:
    """Reject key attributes that could never be used; raises InvalidArgument."""
    if role not in ROLES:
        raise InvalidArgument(f"role must be one of {list(ROLES)}, got {role!r}", code="invalid_role")
    validation.name(tenant, "tenant")
    if collections is not None:
        if not collections:
            raise InvalidArgument(
                "collections must name at least one collection, or be omitted for all", code="invalid_scope"
            )
        if role == "admin":
            # An admin key manages keys for its whole tenant, so a scope would be a false promise.
            raise InvalidArgument("admin keys cannot have a collection scope", code="invalid_scope")
        for c in collections:
            validation.name(c, "collection name in collections")
    if name is not None and (not name or len(name) > validation.MAX_KEY_NAME_CHARS):
        raise InvalidArgument(f"name must be 1-{validation.MAX_KEY_NAME_CHARS} characters", code="invalid_argument")


class MetadataRows(Protocol):
    """Where key rows live: :class:`~engramdb.engine.metadata.Metadata`, or in a cluster, rows in etcd."""

    def get(self, namespace: str, key: str) -> Any | None: ...

    def put(self, namespace: str, key: str, value: Any) -> None: ...

    def scan(self, namespace: str) -> list[tuple[str, Any]]: ...

    def has_rows(self, namespace: str) -> bool: ...


class KeyStore:
    """Keys of every tenant, kept in the engine's metadata rows."""

    def __init__(self, metadata: Metadata | MetadataRows):
        self._meta = metadata
        self.rows = metadata
        # Serialises read-modify-write of key rows (revoke, rotate) within this process.
        self._lock = threading.Lock()
        # Whether any key row exists: read once here, set by every write. Rows are never deleted
        # (revoking keeps the row), and `engramdb keys` cannot open the data directory while a
        # server holds it, so this stays exact without a RocksDB read per request.
        self._has_keys = self._any_row()

    def _any_row(self) -> bool:
        return self._meta.has_rows(_NAMESPACE)

    def has_keys(self) -> bool:
        """Whether any API key was ever stored (revoked and expired ones count)."""
        # Rows other nodes of a cluster write arrive without a write here: ask the (in-memory) rows.
        if not self._has_keys and getattr(self._meta, "shared", False):
            self._has_keys = self._any_row()
        return self._has_keys

    # ----------------------------------------------------------------- rows
    def _put(self, key: ApiKey) -> None:
        self._meta.put(_NAMESPACE, key.id, asdict(key))
        self._has_keys = True

    @staticmethod
    def _decode(value: Any) -> ApiKey:
        return ApiKey(**cast(dict[str, Any], value))

    def get(self, key_id: str) -> ApiKey | None:
        value = self._meta.get(_NAMESPACE, key_id)
        return None if value is None else self._decode(value)

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of ``tenant`` if given), oldest first."""
        keys = [self._decode(v) for _, v in self._meta.scan(_NAMESPACE)]
        if tenant is not None:
            keys = [k for k in keys if k.tenant == tenant]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    # ----------------------------------------------------------- lifecycle
    def create(
        self,
        *,
        tenant: str,
        role: Role,
        collections: list[str] | None = None,
        expires_at: float | None = None,
        name: str | None = None,
        now: float | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key; returns ``(secret, stored key)``. The secret is not kept anywhere."""
        check_key_fields(role, tenant, collections, name)
        now = time.time() if now is None else now
        expires_at = validation.key_expires_at(expires_at, now)
        with self._lock:
            while True:
                secret = KEY_PREFIX + secrets.token_urlsafe(32)
                h = digest(secret)
                if self.get(key_id_of(h)) is None:  # 64-bit id collisions are astronomically rare
                    break
            key = ApiKey(
                id=key_id_of(h),
                hash=h,
                tenant=tenant,
                role=role,
                collections=sorted(set(collections)) if collections is not None else None,
                expires_at=expires_at,
                revoked=False,
                name=name,
                created_at=now,
            )
            self._put(key)
        return secret, key

    def revoke(self, key_id: str, *, tenant: str | None = None) -> ApiKey:
        """Revoke a key at once; ``tenant`` restricts which keys may be named."""
        with self._lock:
            key = self._owned(key_id, tenant)
            if not key.revoked:
                key.revoked = True
                key.revoked_at = time.time()
                self._put(key)
            return key

    def erase_tenant(self, tenant: str) -> int:
        """Strip every key of ``tenant`` to an anonymous revoked row; returns how many (erase tenant).

        The rows stay, holding neither the tenant's name, the scope, the
        label nor the digest: a key was stored once, and authentication stays
        on as it did before (see ``has_keys``).
        """
        with self._lock:
            keys = self.list_keys(tenant)
            now = time.time()
            for k in keys:
                self._put(
                    ApiKey(k.id, "", "", k.role, None, None, True, None, k.created_at, revoked_at=k.revoked_at or now)
                )
            return len(keys)

    def rotate(
        self, key_id: str, *, grace_seconds: float = DEFAULT_ROTATION_GRACE_SECONDS, tenant: str | None = None
    ) -> tuple[str, ApiKey]:
        """A new key with the same tenant, role, scope and name; the old one expires after the grace."""
        grace_seconds = validation.grace_seconds(grace_seconds)
        now = time.time()
        with self._lock:
            old = self._owned(key_id, tenant)
            if old.revoked or old.expired(now):
                raise InvalidArgument(
                    f"key {key_id!r} is revoked or expired; create a new key instead", code="key_not_rotatable"
                )
        # A key stored before expiries were bounded may expire beyond a century: its successor gets the bound.
        expires = None if old.expires_at is None else min(old.expires_at, now + validation.MAX_TTL_SECONDS)
        secret, new = self.create(
            tenant=old.tenant,
            role=old.role,
            collections=old.collections,
            expires_at=expires,
            name=old.name,
            now=now,
        )
        with self._lock:
            cur = self.get(key_id) or old
            grace_end = now + grace_seconds
            keep = cur.expires_at is not None and math.isfinite(cur.expires_at) and cur.expires_at < grace_end
            cur.expires_at = cur.expires_at if keep else grace_end
            cur.replaced_by = new.id
            self._put(cur)
        return secret, new

    def _owned(self, key_id: str, tenant: str | None) -> ApiKey:
        key = self.get(key_id) if isinstance(key_id, str) and key_id else None
        if key is None or (tenant is not None and key.tenant != tenant):
            # Another tenant's key is reported exactly like a missing one.
            raise NotFound(f"API key {key_id!r} does not exist", code="key_not_found")
        return key

    # --------------------------------------------------------------- verify
    def lookup(self, secret: str) -> ApiKey | None:
        """The stored key whose digest matches ``secret``, or None (expiry/revocation not checked)."""
        h = digest(secret)
        key = self.get(key_id_of(h))
        if key is None or not same_digest(key.hash, h):
            return None
        return key


def load_bootstrap_key(settings: Settings) -> str | None:
    """The bootstrap admin key from the environment or the key file, or None.

    Raises InvalidArgument (code ``invalid_config``) when the file cannot be
    read or the key is too short to be safe. The message never contains the key.
    """
    return _load_secret(ADMIN_KEY_ENV, settings.server.admin_key_file, "server.admin_key_file", "the admin key")


def load_metrics_key(settings: Settings) -> str | None:
    """The metrics key (grants ``/metrics`` only) from ``ENGRAMDB_METRICS_KEY`` or ``server.metrics_key_file``.

    Same rules and errors as :func:`load_bootstrap_key`.
    """
    return _load_secret(METRICS_KEY_ENV, settings.server.metrics_key_file, "server.metrics_key_file", "the metrics key")


def _load_secret(env: str, file: Path | None, setting: str, what: str) -> str | None:
    value = os.environ.get(env)
    source = env
    if not value and file is not None:
        path = Path(file)
        source = f"{setting} ({path})"
        try:
            value = path.read_text().strip()
        except OSError as e:
            raise InvalidArgument(f"{source}: cannot read: {e.strerror}", code="invalid_config") from e
    if not value:
        return None
    value = value.strip()
    if len(value) < MIN_BOOTSTRAP_KEY_CHARS or any(c.isspace() for c in value):
        raise InvalidArgument(
            f"{source}: {what} must be at least {MIN_BOOTSTRAP_KEY_CHARS} characters without spaces "
            "(generate one with `engramdb keys generate` or `openssl rand -base64 32`)",
            code="invalid_config",
        )
    return value
