"""`corral runner ...`: this host as a runner of a fleet.

`corral runner join URL --token T` redeems a single-use activation token at the control
plane's gateway (``POST /fleet/v1/join``) and writes what the runner needs to the runner
config file (``~/.corral/runner.json``, or ``--config PATH``; mode 0600): the URL, its
runner id and its credential. The runner needs no database credentials and no inbound
port. `corral runner status` (or `heartbeat-once`) sends one heartbeat with that
credential: it proves the membership works and shows the runner's state.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from corral import __version__
from corral.cli._main import cli
from corral.cli._render import console, print_json, safe
from corral.engine import fleet
from corral.errors import CorralError, UsageError
from corral.locate import STATE_DIR_MODE, STATE_FILE_MODE, corral_home

__all__ = ["runner_config_path", "runner_group"]

_TIMEOUT = 30.0


def runner_config_path(given: Path | None) -> Path:
    return given if given is not None else corral_home() / "runner.json"


_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The runner config file (default ~/.corral/runner.json).",
)


@cli.group("runner")
def runner_group() -> None:
    """This host as a runner of a fleet: join it, check the membership."""


@runner_group.command("join")
@click.argument("url")
@click.option("--token", required=True, envvar="CORRAL_RUNNER_TOKEN",
              help="The activation token (`corral fleet tokens create`); or set "
              "CORRAL_RUNNER_TOKEN, which keeps it off the command line.")  # fmt: skip
@click.option("--name", default=None, help="The runner's name (default: this host's name).")
@click.option("--labels", default=None, help="Labels this runner offers, e.g. gpu,big.")
@click.option("--slots", default=1, show_default=True, type=click.IntRange(1, 1024),
              help="How many runs it takes at once.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace an existing runner config file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (without the credential).")
@_config_option
def join_cmd(
    url: str,
    token: str,
    name: str | None,
    labels: str | None,
    slots: int,
    force: bool,
    as_json: bool,
    config_path: Path | None,
) -> None:
    """Join the fleet whose control plane's gateway is at URL, with a single-use token."""
    base = _base_url(url)
    path = runner_config_path(config_path)
    if path.exists() and not force:
        raise UsageError(
            f"{path} exists already (this host joined a fleet before); pass --force to "
            "replace it, or --config PATH to keep several runners apart"
        )
    hostname = socket.gethostname()
    body = {
        "token": token.strip(),
        "name": name or _default_name(hostname),
        "hostname": hostname,
        "labels": list(fleet.parse_labels(labels)),
        "slots": slots,
        "version": __version__,
    }
    answer = _post(f"{base}/fleet/v1/join", body, None)
    config = {
        "url": base,
        "runnerId": answer["runnerId"],
        "name": answer["name"],
        "credential": answer["credential"],
        "slots": answer["slots"],
        "labels": answer["labels"],
        "heartbeatSeconds": answer["heartbeatSeconds"],
        "offlineAfterSeconds": answer["offlineAfterSeconds"],
        "joinedAt": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_private(path, config)
    shown = {k: v for k, v in config.items() if k != "credential"} | {"config": str(path)}
    if as_json:
        print_json(shown)
        return
    console.print(
        f"joined the fleet at {safe(base)} as runner {safe(answer['runnerId'])} "
        f"({safe(answer['name'])}); its credential is in {safe(path)} (mode 0600). "
        "`corral runner status` checks it."
    )


def _heartbeat(config_path: Path | None) -> tuple[dict[str, Any], dict[str, Any], Path]:
    path = runner_config_path(config_path)
    config = _read_config(path)
    answer = _post(
        f"{config['url']}/fleet/v1/heartbeat",
        {"version": __version__, "running": [], "bundles": []},
        str(config["credential"]),
    )
    return config, answer, path


@runner_group.command("heartbeat-once")
@click.option("--json", "as_json", is_flag=True, help="Print the control plane's answer.")
@_config_option
def heartbeat_once_cmd(as_json: bool, config_path: Path | None) -> None:
    """Send one heartbeat with this runner's credential, and print its state."""
    _, answer, _ = _heartbeat(config_path)
    if as_json:
        print_json(answer)
        return
    console.print(safe(answer["state"]))


@runner_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_config_option
def status_cmd(as_json: bool, config_path: Path | None) -> None:
    """Where this runner belongs, and its state there (one heartbeat proves the
    credential)."""
    config, answer, path = _heartbeat(config_path)
    shown = {
        "url": config["url"],
        "runnerId": answer["runnerId"],
        "name": config.get("name"),
        "state": answer["state"],
        "heartbeatSeconds": answer["heartbeatSeconds"],
        "offlineAfterSeconds": answer["offlineAfterSeconds"],
        "controlPlaneVersion": answer["controlPlaneVersion"],
        "version": __version__,
        "config": str(path),
    }
    if as_json:
        print_json(shown)
        return
    console.print(
        f"runner {safe(shown['runnerId'])} ({safe(shown['name'])}) of {safe(shown['url'])}: "
        f"{safe(shown['state'])}; control plane {safe(shown['controlPlaneVersion'])}, this "
        f"host {safe(__version__)}"
    )


# -- helpers -----------------------------------------------------------------------------


def _base_url(url: str) -> str:
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(
            f"bad control plane URL {url!r}: give the gateway's URL, e.g. "
            "https://corral.example.com or http://10.0.0.5:8080"
        )
    return base


def _default_name(hostname: str) -> str:
    short = hostname.split(".")[0] or "runner"
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in short)
    return cleaned.lstrip("-_.")[:63] or "runner"


def _post(where: str, body: dict[str, Any], credential: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {credential}"} if credential else {}
    try:
        with httpx.Client(timeout=_TIMEOUT) as http:
            response = http.post(where, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise CorralError(f"cannot reach the control plane at {where}: {exc}") from None
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        answer = {"ok": False, "error": response.text[:300]}
    if response.status_code >= 300 or not answer.get("ok"):
        error = answer.get("error") or answer
        raise CorralError(f"the control plane refused ({response.status_code}): {error}")
    return answer


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"no runner config at {path}: join a fleet first (`corral runner join URL "
            "--token T`), or pass --config PATH"
        ) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the runner config {path}: {exc}") from None
    missing = [k for k in ("url", "runnerId", "credential") if not isinstance(config.get(k), str)]
    if not isinstance(config, dict) or missing:
        raise UsageError(
            f"the runner config {path} lacks {', '.join(missing) or 'its fields'}; join again "
            "with `corral runner join URL --token T --force`"
        )
    return config


def _write_private(path: Path, config: dict[str, Any]) -> None:
    """Write ``config`` to ``path`` with mode 0600 from the start (a temporary file in the
    same directory, renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, STATE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, path)


@runner_group.command("start")
@_config_option
@click.option("--print-systemd-unit", is_flag=True, help="Print a systemd unit for this runner.")
@click.option("--verbose", "-v", is_flag=True, help="Log every run's steps.")
def start_cmd(config_path: Path | None, print_systemd_unit: bool, verbose: bool) -> None:
    """Run the fleet's runs on this host until SIGTERM (which drains: running runs
    finish, up to a grace, the rest go back to the queue)."""
    import asyncio
    import logging
    import shutil
    import sys

    from corral.runner.agent import Runner, RunnerSettings, install_signals, systemd_unit

    path = runner_config_path(config_path).absolute()
    if print_systemd_unit:
        executable = shutil.which("corral") or f"{sys.executable} -m corral"
        click.echo(systemd_unit(path, executable), nl=False)
        return
    settings = RunnerSettings.from_config(_read_config(path), path)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("corral.runner").setLevel(logging.INFO)

    async def main() -> list[str] | None:
        stop = asyncio.Event()
        install_signals(stop)
        runner = Runner(settings)
        await runner.run(stop)
        return runner.reexec

    reexec = asyncio.run(main())
    if reexec is not None:  # an upgrade (or its rollback): the same process, another corral
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(reexec[0], reexec)
