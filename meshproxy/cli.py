"""The ``meshproxy`` command line, with Envoy's flags (envoy-subset.md §2).

``meshproxy -c conf.d/`` serves; ``meshproxy --mode validate -c X`` checks a config
without binding anything. Subcommands add what Envoy has no flag for (``meshproxy stats``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import click

from meshproxy import __version__
from meshproxy.logs import LEVELS, setup_logging

if TYPE_CHECKING:
    from meshproxy.config.model import Bootstrap
    from meshproxy.hot_restart import ParentLink
    from meshproxy.server import ServerOptions


def _default_concurrency() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config-path", "config_paths", multiple=True, type=click.Path(),
              help="Config file, or a directory whose *.yaml/*.yml files merge in name order.")
@click.option("--config-yaml", default=None,
              help="YAML merged over the -c config (scalars replace, lists append).")
@click.option("--mode", type=click.Choice(["serve", "validate"]), default="serve", show_default=True,
              help="validate: check the config and exit, binding nothing.")
@click.option("--concurrency", type=int, default=None,
              help="Worker processes (default: CPUs available; 0 means 1).")
@click.option("--base-id", type=int, default=0, show_default=True,
              help="Separates the shared memory and sockets of several instances on one host.")
@click.option("--drain-time-s", type=float, default=600.0, show_default=True,
              help="How long open connections may finish after a stop or reload.")
@click.option("--parent-shutdown-time-s", type=float, default=900.0, show_default=True,
              help="When an old generation is terminated after a hot restart.")
@click.option("-l", "--log-level", type=click.Choice(sorted(LEVELS)), default="info", show_default=True)
@click.option("--log-path", default=None, help="Log to this file instead of stderr (reopened on SIGUSR1).")
@click.option("--pid-file", default=None, help="Write the main process's PID here.")
@click.option("--filter-module", "filter_modules", multiple=True,
              help="Import this Python module to register custom filters. Repeatable.")
@click.option("--restart-epoch", type=int, default=0, show_default=True,
              help="Set by meshproxy itself on a hot restart (SIGHUP); not needed by hand.")
@click.option("--parent-fd", type=int, default=None, hidden=True)
@click.version_option(__version__, "--version", prog_name="meshproxy")
@click.pass_context
def main(ctx: click.Context, config_paths: tuple[str, ...], config_yaml: str | None, mode: str,
         concurrency: int | None, base_id: int, drain_time_s: float, parent_shutdown_time_s: float,
         log_level: str, log_path: str | None, pid_file: str | None, filter_modules: tuple[str, ...],
         restart_epoch: int, parent_fd: int | None) -> None:
    """meshproxy: an Envoy-style service proxy configured with Envoy's v3 bootstrap YAML."""
    if ctx.invoked_subcommand is not None:
        return
    from meshproxy.config import ConfigError, load_config
    from meshproxy.hot_restart import ParentLink

    # A hot-restart child reports a bad config to the running generation, which keeps serving.
    parent = ParentLink(parent_fd) if parent_fd is not None else None

    if not config_paths and not config_yaml:
        raise click.UsageError("give a config with -c/--config-path or --config-yaml")
    shown = ", ".join(config_paths) or "--config-yaml"
    try:
        bootstrap = load_config(config_paths, config_yaml, filter_modules=filter_modules)
    except ConfigError as exc:
        click.echo(f"configuration '{shown}' is invalid:", err=True)
        for error in exc.errors:
            click.echo(f"  {error}", err=True)
        if parent is not None:
            parent.fail("invalid configuration: " + "; ".join(exc.errors))
        sys.exit(1)
    if mode == "validate":
        click.echo(f"configuration '{shown}' OK")
        return

    from meshproxy.server import ServerOptions

    setup_logging(log_level, log_path)
    workers = _default_concurrency() if concurrency is None else max(1, concurrency)
    cli = (("config_path", ",".join(config_paths)), ("config_yaml", config_yaml or ""), ("mode", mode),
           ("log_level", log_level), ("log_path", log_path or ""), ("pid_file", pid_file or ""),
           ("filter_modules", list(filter_modules)))
    options = ServerOptions(concurrency=workers, base_id=base_id, drain_time_s=drain_time_s,
                            parent_shutdown_time_s=parent_shutdown_time_s, pid_file=pid_file, cli=cli)
    sys.exit(_serve(bootstrap, options, parent))


def _serve(bootstrap: Bootstrap, options: ServerOptions, parent: ParentLink | None) -> int:
    """Start a generation: the first (creates the stats segment, binds), or a hot-restart child."""
    from meshproxy.server import MainProcess
    from meshproxy.stats import StatsBackend

    log = logging.getLogger("meshproxy.main")
    inherited = None
    try:
        if parent is not None:
            inherited = parent.handshake()
        backend = StatsBackend(bootstrap, options.base_id, attach=parent is not None)
        return MainProcess(bootstrap, options, backend, inherited, parent).run()
    except Exception as exc:  # before serving: say why, in one line, to the log and the parent
        log.error("cannot start: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        if parent is not None:
            parent.fail(f"{type(exc).__name__}: {exc}")
        return 1


def _add_subcommands() -> None:
    from meshproxy.stats_cli import stats as stats_command

    main.add_command(stats_command)


_add_subcommands()
