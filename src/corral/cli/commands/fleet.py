"""`corral start` (scheduler + gateway, in the foreground) and `corral stop`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from corral.cli._context import CliContext
from corral.cli._instances import InstanceRecord, live_instances
from corral.cli._live import LiveView
from corral.cli._main import cli
from corral.cli._render import (
    add_file_log,
    configure_logging,
    console,
    err_console,
    safe,
    safe_lines,
)
from corral.cli.commands.logs import scheduler_log_path
from corral.engine.plane_upgrade import PlaneUpgrader, plane_window_refusal
from corral.engine.token import (
    ENV_TOKEN_NAME,
    LOCAL_TOKEN_NAME,
    TOKEN_ENV,
    env_token,
    local_token,
)
from corral.errors import UsageError
from corral.inert import inert
from corral.locate import private_dirs, state_dir
from corral.project import Project
from corral.runtime._children import use_pidfd_child_watcher
from corral.scheduler.service import Scheduler, SchedulerOptions, cap_warning, is_live
from corral.store import Store, open_store

if TYPE_CHECKING:
    from fastapi import FastAPI

_STOP_WAIT = 120.0


@cli.command("start")
@click.option("-H", "--headless", is_flag=True, help="Log lines instead of the live view.")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Gateway port (default: [gateway] port)."
)
@click.option(
    "-w",
    "--web-ui",
    is_flag=True,
    help="Accepted for Action Llama compatibility: the dashboard is always served.",
)
@click.option(
    "-e",
    "--expose",
    is_flag=True,
    help="Listen on every interface (or on a non-loopback [gateway] host), not only loopback; "
    "needs an operator token (`corral token create NAME`).",
)
@click.option(
    "--public-metrics",
    is_flag=True,
    help="Serve /metrics without an operator token (for a scraper on a trusted network).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running runs get to finish after `corral stop`.",
)
@click.pass_obj
def start_cmd(
    obj: CliContext,
    headless: bool,
    port: int | None,
    web_ui: bool,
    expose: bool,
    public_metrics: bool,
    grace: float,
) -> None:
    """Run the scheduler and the gateway for this project until stopped.

    The gateway listens on loopback unless --expose is given; exposed, it refuses to start
    until an operator token exists, and accepts only operator tokens from the store (and
    $CORRAL_OPERATOR_TOKEN), not the project's local token file.
    """
    project = obj.project()
    configured = project.config.gateway.host
    if not expose and not is_loopback(configured):
        raise UsageError(
            f"[gateway] host = {configured!r} is not a loopback address: add --expose to "
            "listen on it (the control API then needs an operator token: "
            "`corral token create NAME`)"
        )
    for warning in project.warnings:
        err_console.print(f"[yellow]warning:[/] {safe(warning)}")
    host = (configured if not is_loopback(configured) else "0.0.0.0") if expose else configured
    chosen = project.config.gateway.port if port is None else port
    refuse_second_start(project, chosen)
    configure_logging(
        logging.INFO if headless or not console.is_terminal else logging.WARNING, _LOG_FORMAT
    )
    private_dirs(state_dir(project.root) / "logs", project.root / ".corral")
    add_file_log(scheduler_log_path(project.root), _LOG_FORMAT)
    options = SchedulerOptions(drain_grace=grace)
    live = not headless and console.is_terminal
    gateway = _Gateway(host, chosen, expose=expose, public_metrics=public_metrics)
    reexec = asyncio.run(_serve(project, gateway, options, live=live, env=obj.env))
    if reexec is not None:  # an upgrade (or its rollback): the same process, another corral
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(reexec[0], reexec)


#: The scheduler's log lines (on stderr and in .corral/logs/scheduler.log).
_LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def refuse_second_start(project: Project, port: int) -> None:
    """A `corral start` of this project already runs here on ``port``: say so (its pid,
    its gateway) instead of failing later on the taken port. Another port (``--port 0``
    included) starts a second scheduler of the project on purpose: schedulers share the
    store safely."""
    running = [i for i in live_instances(project.root) if port != 0 and i.port == port]
    if running:
        first = running[0]
        raise UsageError(
            f"a scheduler of this project is already running here: pid {first.pid}, "
            f"gateway {first.url}, started {first.started_at}. Watch it with `corral stat` "
            "or `corral logs`; stop it with `corral stop` (or Ctrl-C where it runs). "
            "To run a second scheduler of this project beside it on purpose, pass --port."
        )


def login_hint(project: Project, url: str, expose: bool) -> str:
    """Where the dashboard is and how to log in to it (the token itself is never printed)."""
    lines = [f"dashboard: {url}/dashboard"]
    if expose:
        lines.append(
            "  log in with an operator token: `corral token create NAME` makes one and "
            f"prints it once (or use ${TOKEN_ENV})"
        )
    else:
        token_file = project.root / ".corral" / "operator-token"
        lines.append(
            f"  log in with this project's operator token: `cat {token_file}` "
            "(or any token from `corral token create NAME`)"
        )
    return "\n".join(lines)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Gateway:
    host: str
    port: int
    expose: bool
    public_metrics: bool


async def _operator_tokens(project: Project, store: Store, expose: bool) -> dict[str, str]:
    """The tokens accepted besides the store's: $CORRAL_OPERATOR_TOKEN, and on loopback
    the project's token file. Exposed, refuse to start while no token would be accepted."""
    fixed: dict[str, str] = {}
    from_env = env_token()
    if from_env:
        fixed[ENV_TOKEN_NAME] = from_env
    if not expose:
        fixed[LOCAL_TOKEN_NAME] = local_token(project.root)
        return fixed
    if not fixed and await store.count_live_operator_tokens() == 0:
        raise UsageError(
            "--expose needs an operator token, and there is none: make one with "
            f"`corral token create NAME` (or set ${TOKEN_ENV}), then start again. Exposed, "
            "the gateway accepts only those tokens, not .corral/operator-token."
        )
    return fixed


async def _serve(
    project: Project,
    gateway: _Gateway,
    options: SchedulerOptions,
    *,
    live: bool,
    env: str | None = None,
) -> list[str] | None:
    """Serve until stopped: None, or (an upgrade of this process, or its rollback) the
    interpreter and arguments to re-execute into."""
    # The one place the CLI reaches into the gateway: serving it. Imported here, not at the
    # top, so that every other command starts without FastAPI and uvicorn (the import-linter
    # contract `cli-no-gateway` allows exactly this import and `corral run`'s).
    from corral.gateway.app import create_app
    from corral.gateway.server import GatewayServer, bind, bind_unix, unix_socket_path

    use_pidfd_child_watcher()
    refusal = plane_window_refusal()
    if refusal is not None:
        raise UsageError(refusal)
    async with await open_store(project.state_url) as store:
        fixed = await _operator_tokens(project, store, gateway.expose)
        host = gateway.host
        try:
            sock = bind(host, gateway.port)
        except UsageError:
            refuse_second_start(project, gateway.port)  # started meanwhile: say which
            raise
        bound = sock.getsockname()[1]
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{bound}"
        record = InstanceRecord(project.root, bound, url)
        socket_path = unix_socket_path(project.root)
        unix_sock = bind_unix(socket_path)
        scheduler = Scheduler(
            project, store, options, gateway_url=url, gateway_unix_url=f"unix:{socket_path}"
        )
        info = await scheduler.start()
        warning = cap_warning(project)
        if warning:
            err_console.print(f"[yellow]warning:[/] {safe(warning)}")
        app = create_app(scheduler, fixed_tokens=fixed, public_metrics=gateway.public_metrics)
        follow_reloads(app, scheduler, env)
        server = GatewayServer.for_app(app)
        stop, stop_now = asyncio.Event(), asyncio.Event()
        _handle_signals(stop, stop_now, scheduler)
        upgrader = PlaneUpgrader(store, scheduler, stop)
        trial = await asyncio.to_thread(upgrader.under_trial)
        err_console.print(f"scheduler {info.id} started; gateway on {safe(url)}")
        err_console.print(f"pid {os.getpid()}; `corral stop` stops it, as Ctrl-C here does")
        err_console.print(safe_lines(login_hint(project, url, gateway.expose)))
        err_console.print(
            f"log: {safe(scheduler_log_path(project.root))} (`corral logs`); "
            "agents added, removed or edited are picked up while it runs"
        )
        serving = asyncio.create_task(server.serve(sockets=[sock, unix_sock]))
        view = asyncio.create_task(LiveView(scheduler, url, warning).run()) if live else None
        upgrading: asyncio.Task[None] | None = None
        try:
            # the new version of an upgrade takes no work before its smoke check passed
            if trial is not None and not await upgrader.check(trial, url):
                stop.set()
            upgrading = asyncio.create_task(upgrader.run(), name="plane upgrade")
            await scheduler.run(stop, stop_now)
        finally:
            if upgrading is not None:
                upgrading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upgrading
            if view is not None:
                view.cancel()
            server.should_exit = True
            await serving
            socket_path.unlink(missing_ok=True)
            record.release()
    err_console.print(f"scheduler {info.id} stopped")
    return upgrader.reexec


def follow_reloads(app: FastAPI, scheduler: Scheduler, env: str | None) -> None:
    """Hot reload reaches the gateway too: webhooks are matched, and calls checked,
    against each new configuration."""
    if scheduler.watcher is not None and env is not None:
        scheduler.watcher.env = env

    def apply(project: Project) -> None:
        api = app.state.agent_api
        api.project = project
        api.ttl = float(project.config.resource_lock_timeout)
        intake = app.state.webhook_intake
        intake.project = project
        intake.forget_secrets()

    scheduler.reload_listeners.append(apply)


def _handle_signals(stop: asyncio.Event, stop_now: asyncio.Event, scheduler: Scheduler) -> None:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            n = len(scheduler.running)
            err_console.print(
                f"stopping: no new runs; {n} running run(s) get up to "
                f"{scheduler.options.drain_grace:g} s to finish (signal again to stop them now)"
            )
            stop.set()
        else:
            err_console.print("stopping now: running runs are being stopped")
            stop_now.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)


@cli.command("stop")
@click.option(
    "--now", is_flag=True, help="Stop running runs at once instead of letting them finish."
)
@click.pass_obj
def stop_cmd(obj: CliContext, now: bool) -> None:
    """Stop the scheduler of this project running on this machine, gracefully."""
    project = obj.project_for_store()
    host = socket.gethostname()

    async def go() -> None:
        async with await open_store(project.state_url) as store:
            options = SchedulerOptions()
            live = [
                s
                for s in await store.list_schedulers(live_only=True)
                if is_live(s, datetime.now(UTC), options.renew_every)
            ]
            here = [s for s in live if s.host == host]
            elsewhere = [s for s in live if s.host != host]
            if not here:
                hint = (
                    f"; schedulers on other hosts ({', '.join(inert(s.host) for s in elsewhere)}) "
                    "must be stopped there"
                    if elsewhere
                    else ""
                )
                raise click.ClickException(f"no scheduler of this project runs here{hint}")
            for info in here:
                os.kill(info.pid, signal.SIGTERM)
                if now:
                    await asyncio.sleep(0.2)
                    os.kill(info.pid, signal.SIGTERM)
                console.print(f"asked scheduler {info.id} (pid {info.pid}) to stop")
            await _wait_stopped(store, {s.id for s in here})

    asyncio.run(go())


async def _wait_stopped(store: Store, ids: set[str]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STOP_WAIT
    while loop.time() < deadline:
        states = {s.id: s.state for s in await store.list_schedulers() if s.id in ids}
        if all(state == "stopped" for state in states.values()):
            console.print("stopped")
            return
        await asyncio.sleep(0.2)
    raise click.ClickException("the scheduler has not stopped yet; it may still be draining")
