"""Bearer-token authentication and role checks as FastAPI dependencies.

- no token, a malformed one, an unknown or revoked one: 401 with `WWW-Authenticate: Bearer`;
- a valid token whose role is below what the endpoint needs: 403.

Roles are ordered viewer < operator < admin. Routers are included with
`dependencies=[Depends(require_role(Role.viewer))]`; an endpoint that changes state adds
`require_role(Role.operator)` (acknowledge, accept, reject) or `Role.admin`
(configuration: keys, rules, receivers). The required role is recorded on the dependency
so tests and the OpenAPI document can read it from the route table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from fastapi import Depends, Request, Security, routing
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import services_of
from api.keys import ApiKey, KeyStore, KeyStoreError, KeyStoreUnavailableError, Role
from api.problems import ProblemError, problem_response

SCHEME_NAME = "bearerAuth"

bearer = HTTPBearer(
    auto_error=False,
    scheme_name=SCHEME_NAME,
    bearerFormat="dct_<key id>_<secret>",
    description="API key from `dctwin apikey create` (or the demo key `dctwin demo` "
    "prints), sent as `Authorization: Bearer <key>`. Roles: viewer (read), "
    "operator (acknowledge, accept, reject), admin (configuration).",
)


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    role: Role


def _unauthorized(detail: str, error: str | None) -> ProblemError:
    challenge = 'Bearer realm="dctwin"'
    if error:
        challenge += f', error="{error}"'
    return ProblemError(401, detail, "unauthorized", headers={"WWW-Authenticate": challenge})


async def authenticate(
    request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)
) -> Principal:
    """The caller's key; 401 unless a valid, unrevoked bearer token was sent; 503 if no key
    set could ever be read (the key file locked since start-up).

    Async on purpose: usually two stat calls and a dict lookup, cheaper than a thread-pool
    hop; the rare re-read after a key change runs in a thread (`KeyStore.averify`), so a
    locked key file never blocks the event loop."""
    if creds is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer <key>`", None)
    keys: KeyStore = services_of(request).keys
    try:
        key: ApiKey | None = await keys.averify(creds.credentials)
    except KeyStoreUnavailableError as exc:
        raise _key_store_unavailable(exc) from exc
    if key is None:
        raise _unauthorized("invalid API key: unknown, malformed or revoked", "invalid_token")
    principal = Principal(key.key_id, key.name, key.role)
    request.state.principal = principal
    return principal


def _key_store_unavailable(exc: KeyStoreError) -> ProblemError:
    return ProblemError(
        503, f"{exc}; retry shortly", "key-store-unavailable", headers={"Retry-After": "1"}
    )


@cache
def require_role(role: Role | str):
    """A dependency that admits keys of `role` or above (one callable per role, so
    FastAPI runs it once per request however often it is declared)."""
    required = Role(role)

    # async: a sync dependency would cost a thread-pool hop on every request
    async def dependency(principal: Principal = Depends(authenticate)) -> Principal:
        if not principal.role.allows(required):
            raise ProblemError(
                403,
                f"this needs the {required.value} role; key "
                f"{principal.key_id} has {principal.role.value}",
                "forbidden",
            )
        return principal

    dependency.required_role = required  # type: ignore[attr-defined]
    dependency.__name__ = f"require_{required.value}"
    return dependency


@dataclass(frozen=True, slots=True)
class RouteInfo:
    path: str  # as in the OpenAPI document: /v1/devices/{device_id}
    methods: frozenset[str]
    role: Role | None  # None: open to anyone
    include_in_schema: bool


def api_routes(app) -> list[RouteInfo]:
    """Every endpoint of the app, with included routers flattened, and its role."""
    out = []
    for rc in routing.iter_route_contexts(app.routes):
        dependant = getattr(rc, "dependant", None)
        if dependant is None or rc.path_format is None:
            continue
        out.append(
            RouteInfo(
                rc.path_format,
                frozenset(rc.methods or ()),
                route_role(rc),
                bool(getattr(rc, "include_in_schema", True)),
            )
        )
    return out


def route_role(route) -> Role | None:
    """The highest role any dependency of this route requires (None: open)."""
    found: list[Role] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        role = getattr(dep.call, "required_role", None)
        if role is not None:
            found.append(role)
        elif dep.call is authenticate:
            found.append(Role.viewer)
        stack.extend(dep.dependencies)
    return max(found, key=lambda r: r.rank) if found else None


class AuthGate:
    """ASGI middleware: every `/v1` request needs a valid key before anything else runs.

    Role checks stay with the routes (403); this gate makes sure no `/v1` path, including
    one from a router included without `require_role`, answers anything (not even a body
    parse error) to a caller without a valid, unrevoked key.
    """

    def __init__(self, app, keys_of, prefix: str = "/v1") -> None:
        self.app = app
        self.keys_of = keys_of  # () -> KeyStore, read per request (tests swap stores)
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == self.prefix or path.startswith(self.prefix + "/"):
            token = None
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    scheme, _, cred = value.decode("latin-1").partition(" ")
                    if scheme.lower() == "bearer" and cred.strip():
                        token = cred.strip()
                    break
            try:
                key = None if token is None else await self.keys_of().averify(token)
            except KeyStoreUnavailableError as unavailable:
                exc = _key_store_unavailable(unavailable)
                response = problem_response(503, exc.detail, path, exc.type, exc.title, exc.headers)
                await response(scope, receive, send)
                return
            if key is None:
                exc = _unauthorized(
                    "missing API key: send `Authorization: Bearer <key>`"
                    if token is None
                    else "invalid API key: unknown, malformed or revoked",
                    None if token is None else "invalid_token",
                )
                response = problem_response(401, exc.detail, path, exc.type, exc.title, exc.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
