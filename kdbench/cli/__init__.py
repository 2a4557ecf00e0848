"""The ``kdbench`` command line. One module per command group."""
from __future__ import annotations

import logging
import sys

import click

from kdbench.core.errors import KdbenchError


class KdbenchGroup(click.Group):
    """Turns user mistakes into one line on stderr and exit code 2, and adds plugin commands."""

    _plugin_commands_added = False
    with_executor_options: list[click.Command] = []  # commands that got the executors' options already

    def _add_plugin_commands(self, ctx: click.Context) -> None:
        if self._plugin_commands_added:
            return
        self._plugin_commands_added = True
        from kdbench.core.host import get_host

        host = get_host(ctx.params.get("plugins_dir"))
        host.call("register_commands", cli=self)

    def _add_executor_options(self, ctx: click.Context, cmd: click.Command) -> None:
        """``kdbench run`` gets the options executors contribute (``Executor.cli_options``)."""
        if cmd in self.with_executor_options:
            return
        self.with_executor_options.append(cmd)
        from kdbench.core.host import get_host

        have = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        for executor in get_host(ctx.params.get("plugins_dir")).executors:
            for option in executor.cli_options:
                if not have & set(option.opts):
                    cmd.params.append(option)
                    have |= set(option.opts)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        # here, not in get_command: `kdbench --help` lists the commands without loading any plugin
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None and name == "run":
            self._add_executor_options(ctx, cmd)
        return name, cmd, rest

    def get_command(self, ctx: click.Context, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is None and not ctx.resilient_parsing:
            self._add_plugin_commands(ctx)
            cmd = super().get_command(ctx, name)
        return cmd

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KdbenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=KdbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugins-dir", type=click.Path(file_okay=False), envvar="KDBENCH_PLUGINS_DIR",
              help="Also load plugin files (*.py) from this directory.")
@click.version_option(package_name="kdbench")
@click.pass_context
def cli(ctx: click.Context, plugins_dir: str | None) -> None:
    """kdbench: benchmark knowledge distillation, pruning and quantization on timm models."""
    ctx.obj = {"plugins_dir": plugins_dir}


def host_from(ctx: click.Context):
    from kdbench.core.broken import warn_broken
    from kdbench.core.host import get_host

    host = get_host((ctx.obj or {}).get("plugins_dir"))
    warn_broken(host)  # every command that loads plugins says which failed, once
    return host


from kdbench.cli import bench as _bench  # noqa: E402  (commands register themselves on `cli`)
from kdbench.cli import leaderboard as _leaderboard  # noqa: E402
from kdbench.cli import list as _list  # noqa: E402
from kdbench.cli import plugins as _plugins  # noqa: E402
from kdbench.cli import report as _report  # noqa: E402
from kdbench.cli import reproduce as _reproduce  # noqa: E402
from kdbench.cli import run as _run  # noqa: E402


def main() -> None:
    # torch.utils.benchmark imports cpp_extension, which warns on machines without CUDA
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        cli.main(prog_name="kdbench")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
