"""The `xcounter` command: a click group whose subcommands live one per module in this package.

Commands are thin: parse options, call the Python API, print. A user mistake (XCounterError,
click.UsageError) ends as one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import importlib
import sys

import click

from xcounter import __version__
from xcounter.errors import XCounterError

#: subcommand modules, each exposing a click object named `command`
COMMAND_MODULES = ("explain", "demo", "audit", "traverse", "finetune", "phantoms", "inspect")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xcounter")
def cli() -> None:
    """Counterfactual explanations for medical image classifiers.

    Pairs a disease classifier with a Stable Diffusion generator fine-tuned on medical images,
    and shows which anatomical, pathological or device attributes drive each decision.
    """


def _register() -> None:
    for name in COMMAND_MODULES:
        module_name = f"xcounter.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not built yet; anything else is a real error
                continue
            raise
        cli.add_command(module.command)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the group, turning user errors into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="xcounter", standalone_mode=False)
    except XCounterError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.UsageError as exc:  # one line, like every other user mistake; the help is one flag away
        command = exc.ctx.command_path if exc.ctx is not None else "xcounter"
        click.echo(f"Error: {exc.format_message()} (see '{command} --help')", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except FileNotFoundError as exc:
        click.echo(f"Error: file not found: {exc.filename or exc}", err=True)
        return 2
    except OSError as exc:  # a folder that cannot be made or written, a full disk: the system's words, one line
        click.echo(f"Error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"Error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    return 0


def run() -> None:
    sys.exit(main())
