"""Operator tokens: `corral token create NAME`, `corral token ls`, `corral token revoke NAME`.

A token authenticates the control API, the dashboard and /metrics. The store keeps only
its SHA-256; the token is printed once, by `create`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
from rich.table import Table

from corral.cli._context import CliContext
from corral.cli._main import cli
from corral.cli._render import cell, console, err_console, fmt_time, print_json, safe
from corral.engine import actions
from corral.engine.token import check_token_name, hash_token, new_token
from corral.errors import UsageError
from corral.store import OperatorToken
from corral.views import iso_time

__all__ = ["token_json"]


def token_json(token: OperatorToken) -> dict[str, Any]:
    return {
        "name": token.name,
        "createdAt": iso_time(token.created_at),
        "lastUsedAt": iso_time(token.last_used_at),
        "revokedAt": iso_time(token.revoked_at),
        "revoked": token.revoked,
    }


@cli.group("token")
def token_group() -> None:
    """Operator tokens for the control API, the dashboard and /metrics."""


@token_group.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the token) instead.")
@click.pass_obj
def create_cmd(obj: CliContext, name: str, as_json: bool) -> None:
    """Make an operator token named NAME and print it, once.

    Only its hash is kept: copy it now. Present it as `Authorization: Bearer <token>`.
    """
    check_token_name(name)
    project = obj.project()
    token = new_token()

    async def go() -> OperatorToken:
        async with await obj.store(project) as store:
            return await store.create_operator_token(
                name, hash_token(token), actor=actions.cli_actor()
            )

    made = asyncio.run(go())
    if as_json:
        print_json(token_json(made) | {"token": token})
        return
    sys.stdout.write(token + "\n")
    err_console.print(
        f"made operator token {safe(name)}; it is shown only now, so store it somewhere "
        f"safe. Send it as `Authorization: Bearer <token>`; `corral token revoke "
        f"{safe(name)}` disables it."
    )


@token_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def ls_cmd(obj: CliContext, as_json: bool) -> None:
    """List the operator tokens (names and dates; the tokens themselves are not kept)."""
    project = obj.project()

    async def go() -> list[OperatorToken]:
        async with await obj.store(project) as store:
            return await store.list_operator_tokens()

    tokens = asyncio.run(go())
    if as_json:
        print_json([token_json(t) for t in tokens])
        return
    if not tokens:
        console.print("no operator tokens; `corral token create NAME` makes one")
        return
    table = Table("name", "created", "last used", "revoked", box=None)
    for token in tokens:
        table.add_row(
            cell(token.name),
            fmt_time(token.created_at),
            fmt_time(token.last_used_at),
            fmt_time(token.revoked_at) if token.revoked else "-",
        )
    console.print(table)


@token_group.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke_cmd(obj: CliContext, name: str) -> None:
    """Revoke the operator token NAME: gateways refuse it within a few seconds."""
    project = obj.project()

    async def go() -> tuple[OperatorToken | None, bool]:
        async with await obj.store(project) as store:
            before = {t.name: t for t in await store.list_operator_tokens()}.get(name)
            after = await store.revoke_operator_token(name, actor=actions.cli_actor())
            return after, before is not None and before.revoked

    token, already = asyncio.run(go())
    if token is None:
        raise UsageError(f"no operator token named {name!r}; `corral token ls` lists them")
    if already:
        console.print(f"token {safe(name)} was already revoked ({fmt_time(token.revoked_at)})")
        return
    console.print(f"revoked token {safe(name)}; gateways refuse it within a few seconds")
