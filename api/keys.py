"""API keys: bearer tokens with a role, stored hashed in their own DuckDB file.

A token looks like `dct_<key id>_<secret>`: the key id (12 characters, public, shown by
`dctwin apikey list`) finds the row; the secret is 32 random bytes (256 bits). Only
SHA-256 of the whole token is stored. A slow password hash (scrypt, argon2) protects
low-entropy secrets people choose; these secrets are machine-made and 256 bits long, so
brute-forcing a leaked hash is already infeasible, and a fast hash keeps the check to
microseconds per request (a 50 ms KDF would break the API's 20 ms p99 target).
Comparison is constant-time.

Why a separate DuckDB file (`DCTWIN_APIKEY_DB`, default beside the twin's database):
the twin's file is held open by the server process, and DuckDB lets only one process
write a file. Keys must be created and revoked (`dctwin apikey ...`) while the server
runs, so neither side holds this file open: each operation opens, works, closes.

Revocation takes effect on the next request: the server caches the key table in memory
and re-reads it whenever the file's (mtime, size) change, checked on every request (two
`stat` calls, a few microseconds); revoking through the API also clears the cache.

A locked file never stalls the API: the API re-reads the table off the event loop
(`averify`: `asyncio.to_thread`), waits for the lock at most `reload_wait_s`, and while
the file stays locked keeps answering from the last key set it read (retrying every
`reload_wait_s`). Only with no key set read yet does a request fail, with
`KeyStoreUnavailableError` (the API's 503).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

TOKEN_PREFIX = "dct"
KEY_ID_RE = re.compile(r"^[0-9a-z]{12}$")

# The embedded demo key: public, printed by `dctwin demo`, only ever inserted into a demo's
# own key file. Never use it on a real site.
DEMO_KEY_ID = "demo00000001"
DEMO_KEY = f"{TOKEN_PREFIX}_{DEMO_KEY_ID}_dctwin-demo-key-public-not-for-production-use"

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id VARCHAR PRIMARY KEY,
    name VARCHAR NOT NULL,
    role VARCHAR NOT NULL,
    token_sha256 VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP
);
"""


class Role(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, required: Role) -> bool:
        return self.rank >= required.rank


_RANK = {Role.viewer: 0, Role.operator: 1, Role.admin: 2}


class KeyStoreError(RuntimeError):
    pass


class KeyStoreUnavailableError(KeyStoreError):
    """The key file cannot be read (locked by another process) and no key set was read
    before; the API answers 503."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    role: Role
    created_at: datetime  # aware UTC
    revoked_at: datetime | None
    token_sha256: str

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def split_token(token: str) -> str | None:
    """The key id of a well-formed token, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not KEY_ID_RE.match(key_id) or len(secret) < 16:
        return None
    return key_id


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC)


class KeyStore:
    def __init__(
        self, path: str | Path, lock_timeout_s: float = 10.0, reload_wait_s: float = 0.5
    ) -> None:
        self.path = Path(path)
        self._watched = (str(self.path), f"{self.path}.wal")  # stat()ed on every request
        self.lock_timeout_s = lock_timeout_s  # writes and explicit reads (CLI, admin API)
        self.reload_wait_s = reload_wait_s  # a request's reload: then serve the last key set
        self._lock = threading.RLock()  # one DuckDB handle at a time in this process
        self._cache: dict[str, ApiKey] = {}
        self._sig: tuple | None = None
        self._loaded = False  # a key set was read at least once
        self._retry_at = 0.0  # monotonic: while locked, no reload attempt before this
        self.reloads = 0
        self.stale_answers = 0  # requests answered from the last key set while locked
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._run(lambda con: con.execute(SCHEMA), read_only=False)

    # -- file access -----------------------------------------------------------------

    def _run(self, fn, read_only: bool, wait_s: float | None = None):
        """Open the file, run `fn(con)`, close; retry while another process holds it, for
        at most `wait_s` (default `lock_timeout_s`)."""
        deadline = time.monotonic() + (self.lock_timeout_s if wait_s is None else wait_s)
        delay = 0.01
        with self._lock:
            while True:
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only)
                except duckdb.IOException as exc:
                    if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                        raise KeyStoreError(f"cannot open key store {self.path}: {exc}") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, 0.2)
                    continue
                try:
                    return fn(con)
                finally:
                    con.close()

    def _signature(self) -> tuple[tuple[int, int] | None, ...]:
        sig: list[tuple[int, int] | None] = []
        for p in self._watched:
            try:
                st = os.stat(p)
                sig.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                sig.append(None)
        return tuple(sig)

    def _load(self, wait_s: float | None = None) -> None:
        sig = self._signature()  # taken first: a write during the load forces a reload
        rows = self._run(
            lambda con: con.execute(
                "SELECT key_id, name, role, created_at, revoked_at, token_sha256 FROM api_keys"
            ).fetchall(),
            read_only=True,
            wait_s=wait_s,
        )
        self._cache = {
            r[0]: ApiKey(r[0], r[1], Role(r[2]), r[3].replace(tzinfo=UTC), _utc(r[4]), r[5])
            for r in rows
        }
        self._sig = sig
        self._loaded = True
        self._retry_at = 0.0
        self.reloads += 1

    def invalidate(self) -> None:
        self._sig = None

    def _stale(self) -> bool:
        """Whether a request should re-read the table first (two stat calls)."""
        if self._sig is not None and self._signature() == self._sig:
            return False
        if self._loaded and time.monotonic() < self._retry_at:
            # locked a moment ago: answer from the last key set until the next retry
            self.stale_answers += 1
            return False
        return True

    def refresh(self, wait_s: float | None = None) -> None:
        """Re-read the key table if the file changed, waiting for a lock at most `wait_s`
        (default `reload_wait_s`). Still locked: keep the last key set, or raise
        KeyStoreUnavailableError if there is none."""
        wait_s = self.reload_wait_s if wait_s is None else wait_s
        with self._lock:
            if not self._stale():
                return
            try:
                self._load(wait_s)
            except KeyStoreError as exc:
                if not self._loaded:
                    raise KeyStoreUnavailableError(
                        f"API keys cannot be read: {self.path} is locked by another process"
                    ) from exc
                if self._retry_at == 0.0:  # once per locked period, not per request
                    log.warning("key file %s locked; answering from the last key set", self.path)
                self._retry_at = time.monotonic() + max(wait_s, 0.1)
                self.stale_answers += 1

    def _lookup(self, token: str, key_id: str) -> ApiKey | None:
        key = self._cache.get(key_id)
        if key is None or not key.active:
            return None
        if not hmac.compare_digest(key.token_sha256, hash_token(token)):
            return None
        return key

    # -- operations --------------------------------------------------------------------

    def verify(self, token: str) -> ApiKey | None:
        """The active key this token belongs to, or None. Re-reads a changed file first,
        waiting for a lock at most `reload_wait_s` (in the calling thread: async code
        calls `averify`)."""
        key_id = split_token(token)
        if key_id is None:
            return None
        if self._stale():
            self.refresh()
        return self._lookup(token, key_id)

    async def averify(self, token: str) -> ApiKey | None:
        """`verify` for the event loop: a re-read (rare: the file changed) runs in a
        worker thread, so a locked file never blocks other requests."""
        key_id = split_token(token)
        if key_id is None:
            return None
        if self._stale():
            await asyncio.to_thread(self.refresh)
        return self._lookup(token, key_id)

    def create(self, name: str, role: Role | str, token: str | None = None) -> tuple[ApiKey, str]:
        """A new key; returns it and the token (shown once, never stored)."""
        role = Role(role)
        if not name.strip():
            raise ValueError("key name must not be empty")
        if token is None:
            key_id = secrets.token_hex(6)
            token = f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        else:
            parsed = split_token(token)
            if parsed is None:
                raise ValueError(
                    f"malformed token: expected {TOKEN_PREFIX}_<12 [0-9a-z]>_"
                    "<secret of 16+ characters>"
                )
            key_id = parsed
        now = datetime.now(UTC).replace(microsecond=0)
        digest = hash_token(token)

        def insert(con):
            if con.execute("SELECT 1 FROM api_keys WHERE key_id = ?", [key_id]).fetchone():
                raise KeyStoreError(f"key id {key_id} already exists")
            con.execute(
                "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL)",
                [key_id, name, role.value, digest, now.replace(tzinfo=None)],
            )

        self._run(insert, read_only=False)
        self.invalidate()
        return ApiKey(key_id, name, role, now, None, digest), token

    def ensure(self, name: str, role: Role | str, token: str) -> ApiKey:
        """Insert this exact token unless present (the demo key); returns its key."""
        key_id = split_token(token)
        existing = {k.key_id: k for k in self.list()}
        if key_id in existing and existing[key_id].token_sha256 == hash_token(token):
            return existing[key_id]
        return self.create(name, role, token)[0]

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        self._load()
        keys = sorted(self._cache.values(), key=lambda k: (k.created_at, k.key_id))
        return [k for k in keys if include_revoked or k.active]

    def get(self, key_id: str) -> ApiKey | None:
        self._load()
        return self._cache.get(key_id)

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke at once; raises KeyError for an unknown id. Revoking twice is a no-op."""
        now = datetime.now(UTC).replace(microsecond=0)

        def update(con):
            row = con.execute(
                "SELECT revoked_at FROM api_keys WHERE key_id = ?", [key_id]
            ).fetchone()
            if row is None:
                raise KeyError(key_id)
            if row[0] is None:
                con.execute(
                    "UPDATE api_keys SET revoked_at = ? WHERE key_id = ?",
                    [now.replace(tzinfo=None), key_id],
                )

        self._run(update, read_only=False)
        self.invalidate()
        key = self.get(key_id)
        assert key is not None
        return key
