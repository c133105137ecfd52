"""`dctwin apikey create|list|revoke`: manage the API's bearer keys (stored hashed)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

apikey_app = typer.Typer(
    help="Create, list and revoke API keys (roles: viewer, operator, admin).", no_args_is_help=True
)

DbOption = typer.Option(
    None, "--db", help="key store file (default DCTWIN_APIKEY_DB or var/apikeys.duckdb)"
)


def _store(db: Path | None):
    from api.keys import KeyStore
    from dctwin.settings import Settings

    return KeyStore(db or Settings().apikey_db)


@apikey_app.command("create")
def create(
    name: str = typer.Option(..., "--name", "-n", help="who or what uses the key"),
    role: str = typer.Option("viewer", "--role", "-r", help="viewer, operator or admin"),
    db: Path = DbOption,
) -> None:
    """Create a key and print its token once (only its SHA-256 is stored)."""
    from api.keys import KeyStoreError, Role

    try:
        r = Role(role)
    except ValueError:
        typer.echo(f"error: --role: {role!r} is not one of viewer, operator, admin", err=True)
        raise typer.Exit(2) from None
    try:
        key, token = _store(db).create(name, r)
    except (ValueError, KeyStoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"created key {key.key_id} ({key.role.value}) for {key.name!r}; the token is "
        "shown only now:",
        err=True,
    )
    typer.echo(token)


@apikey_app.command("list")
def list_(
    all_: bool = typer.Option(False, "--all", "-a", help="include revoked keys"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    db: Path = DbOption,
) -> None:
    """List keys (id, name, role, created, revoked); never the tokens."""
    keys = _store(db).list(include_revoked=all_)
    for k in keys:
        row = {
            "key_id": k.key_id,
            "name": k.name,
            "role": k.role.value,
            "created_at": k.created_at.isoformat().replace("+00:00", "Z"),
            "revoked_at": k.revoked_at.isoformat().replace("+00:00", "Z") if k.revoked_at else None,
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            state = f"revoked {row['revoked_at']}" if k.revoked_at else "active"
            typer.echo(f"{k.key_id}  {k.role.value:<8}  {row['created_at']}  {state:<30}  {k.name}")
    if not keys and not as_json:
        typer.echo("no keys", err=True)


@apikey_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="the key id shown by `dctwin apikey list`"),
    db: Path = DbOption,
) -> None:
    """Revoke a key; a running server rejects it from its next request on."""
    try:
        key = _store(db).revoke(key_id)
    except KeyError:
        typer.echo(f"error: no key with id {key_id!r}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"revoked {key.key_id} ({key.name})")
