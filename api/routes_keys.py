"""Key management (admin) and `whoami` (any key)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.config import JsonDict

from api.auth import Principal, authenticate, require_role
from api.deps import KeysDep
from api.keys import ApiKey, Role
from api.problems import ProblemError, problem_responses
from api.shape import Cursor, Limit, Page, paginate

T0 = "2025-06-01T12:00:00Z"
KEY_EXAMPLE: JsonDict = {
    "key_id": "3f9a1c0b7d2e",
    "name": "grafana",
    "role": "viewer",
    "created_at": T0,
    "revoked_at": None,
    "active": True,
}


class KeyOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [KEY_EXAMPLE]})

    key_id: str = Field(description="public id; the token is dct_<key_id>_<secret>")
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    active: bool

    @classmethod
    def of(cls, k: ApiKey) -> KeyOut:
        return cls(
            key_id=k.key_id,
            name=k.name,
            role=k.role,
            created_at=k.created_at,
            revoked_at=k.revoked_at,
            active=k.active,
        )


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "grafana", "role": "viewer"}]}
    )

    name: str = Field(
        min_length=1, max_length=200, pattern=r"\S", description="who or what uses the key"
    )
    role: Role = Role.viewer

    @field_validator("name")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        # Python's idea of whitespace is wider than the pattern's (e.g. U+001F): strip
        # here so a name that is blank by either rule is a 422, not a 500 later
        if not v.strip():
            raise ValueError("must contain a visible character")
        return v.strip()


class KeyCreated(KeyOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{**KEY_EXAMPLE, "token": "dct_3f9a1c0b7d2e_x8Qd0...secret...Zq"}]
        }
    )

    token: str = Field(description="the bearer token; shown only in this response")


class WhoAmI(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"key_id": "3f9a1c0b7d2e", "name": "noc-wall", "role": "operator"}]
        }
    )

    key_id: str
    name: str
    role: Role


KeyId = Annotated[str, Path(min_length=1, max_length=64, examples=["3f9a1c0b7d2e"])]


router = APIRouter(prefix="/v1", tags=["auth"])
admin = [Depends(require_role(Role.admin))]


@router.get("/whoami", response_model=WhoAmI, summary="The calling key and its role")
def whoami(principal: Principal = Depends(authenticate)) -> WhoAmI:
    return WhoAmI(key_id=principal.key_id, name=principal.name, role=principal.role)


@router.get(
    "/apikeys", response_model=Page[KeyOut], dependencies=admin, summary="List API keys (admin)"
)
def list_keys(keys: KeysDep, limit: Limit = 100, cursor: Cursor = None) -> Page[KeyOut]:
    items = sorted(keys.list(), key=lambda k: k.key_id)
    page = paginate(items, lambda k: k.key_id, limit, cursor, scope="apikeys")
    return Page[KeyOut](items=[KeyOut.of(k) for k in page.items], next_cursor=page.next_cursor)


@router.post(
    "/apikeys",
    response_model=KeyCreated,
    status_code=201,
    dependencies=admin,
    summary="Create an API key (admin)",
)
def create_key(keys: KeysDep, body: KeyCreate) -> KeyCreated:
    try:
        key, token = keys.create(body.name, body.role)
    except ValueError as exc:
        raise ProblemError(422, f"body.name: {exc}", "validation") from exc
    return KeyCreated(**KeyOut.of(key).model_dump(), token=token)


@router.delete(
    "/apikeys/{key_id}",
    response_model=KeyOut,
    dependencies=admin,
    responses=problem_responses(404, e404="no API key with id '3f9a1c0b7d2e'"),
    summary="Revoke an API key at once (admin)",
)
def revoke_key(keys: KeysDep, key_id: KeyId) -> KeyOut:
    try:
        return KeyOut.of(keys.revoke(key_id))
    except KeyError:
        raise ProblemError(404, f"no API key with id {key_id!r}", "not-found") from None
