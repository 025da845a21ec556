"""The ``terrapipe`` command line.

Each command lives beside the code it drives (``pipelines/<area>/cli.py``) and is attached here,
one line each. Heavy imports happen inside the commands, so ``terrapipe --help`` stays fast, and
nothing here imports an optional extra (torch, Airflow): a command that needs one says so where it
is attached (``_needs``) and exits 2 naming the extra when it is not installed.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from pipelines import __version__
from pipelines.errors import (
    BadInputError,
    NoScenesError,
    TerrapipeError,
    is_transient,
    missing_extra,
    require_extra,
)

app = typer.Typer(
    name="terrapipe",
    help="Earth observation batch production: STAC in, Dask/xarray stages, Zarr/COG/STAC out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stderr = Console(stderr=True)

#: Exit codes: 2 bad input (never retry), 3 no scenes (skip), 4 transient I/O (retry), 1 other.
EXIT_BAD_INPUT = 2
EXIT_NO_SCENES = 3
EXIT_TRANSIENT = 4


@app.command()
def version(
    code: bool = typer.Option(
        False,
        "--code",
        help="Also print the sha256 of terrapipe's installed files: what each connection to "
        "a Dask cluster compares on every worker (docs/operations.md).",
    ),
) -> None:
    """Print the software version (with ``--code``, the sha256 of its files after it)."""
    if code:
        from operators.software import installed_software

        print(f"{__version__} {installed_software().code}")
    else:
        print(__version__)


@app.command()
def stages() -> None:
    """List the registered stages with their inputs, version and resources."""
    from rich.table import Table

    from pipelines.stages import get_stage, list_stages

    table = Table("stage", "inputs", "output", "version", "resources")
    for name in list_stages():
        s = get_stage(name)
        table.add_row(
            s.name, ", ".join(s.inputs), s.output, s.version, str(dict(s.resources)) or "-"
        )
    Console().print(table)


def _needs(extra: str, command: Callable[..., Any]) -> Callable[..., Any]:
    """``command``, checking first that the optional ``extra`` is installed."""

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        require_extra(extra)
        return command(*args, **kwargs)

    return checked


def _attach_commands() -> None:
    """Attach the commands that live beside their code (one line each)."""
    from pipelines import bench as bench_module
    from pipelines import bench_province, evaluate, production_cli
    from pipelines.stages import cli as stage_cli

    app.command()(production_cli.plan)
    app.command()(_needs("airflow", production_cli.run))
    app.command()(_needs("airflow", production_cli.backfill))
    app.command()(production_cli.status)
    app.command()(production_cli.catalog)
    app.command()(_needs("airflow", production_cli.redo))
    app.command()(_needs("airflow", production_cli.demo))
    app.command()(stage_cli.stage)
    app.command()(bench_module.bench)
    app.command("bench-province")(bench_province.bench_province)
    agri_cli = __import__("pipelines.agri.cli", fromlist=["season"])
    app.command()(_needs("airflow", agri_cli.season))
    app.command("demo-labels")(agri_cli.demo_labels)
    eval_app = typer.Typer(help="Quality metrics against truth, as JSON.", no_args_is_help=True)
    eval_app.command("classical")(evaluate.eval_classical)
    eval_app.command("water")(evaluate.eval_water)
    models_cli = __import__("models.cli", fromlist=["models"])
    eval_app.command("dehaze")(_needs("ml", models_cli.eval_dehaze))
    eval_app.command("super_resolution")(_needs("ml", models_cli.eval_super_resolution))
    eval_app.command("parcels")(agri_cli.eval_parcels)
    eval_app.command("crop_type")(agri_cli.eval_crop_type)
    eval_app.command("yield")(agri_cli.eval_yield)
    eval_app.command("season")(agri_cli.eval_season)
    app.command()(_needs("ml", models_cli.models))
    app.add_typer(models_cli.train_app, name="train", callback=lambda: require_extra("ml"))
    app.add_typer(eval_app, name="eval")
    app.add_typer(__import__("pipelines.catalog.cli", fromlist=["app"]).app, name="stac")
    __import__("pipelines.demo.cli", fromlist=["attach"]).attach(app)
    web_cli = __import__("pipelines.web.cli", fromlist=["serve"])
    app.command()(web_cli.serve)
    app.command("bench-tiles")(web_cli.bench_tiles)
    deploy = __import__("pipelines.deploy", fromlist=["deploy_render"])
    app.command("deploy-render")(_needs("airflow", deploy.deploy_render))


def exit_code_of(returned: Any) -> int:
    """The exit code of what the app returned without standalone mode: click returns the code of
    a ``typer.Exit`` (and a command's own return value) instead of raising it."""
    if isinstance(returned, int) and not isinstance(returned, bool):
        return returned
    return 0


def say(label: str, text: str) -> None:
    """One line on stderr: ``label`` (rich markup) and ``text`` as it is (user values may hold
    ``[...]``, which is never read as markup), whitespace and newlines folded."""
    from rich.markup import escape

    stderr.print(f"{label} {escape(' '.join(text.split()))}", soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map terrapipe errors to clear messages and exit codes."""
    import click

    from pipelines.errors import RunCancelled, TransientIOError

    _attach_commands()
    try:
        return exit_code_of(app(args=argv, standalone_mode=False))
    except BadInputError as exc:
        say("[bold red]error:[/]", str(exc))
        return EXIT_BAD_INPUT
    except ModuleNotFoundError as exc:  # an optional extra imported deeper down
        missing = missing_extra(exc)
        if missing is None:
            raise
        say("[bold red]error:[/]", str(missing))
        return EXIT_BAD_INPUT
    except NoScenesError as exc:
        say("[yellow]no scenes:[/]", str(exc))
        return EXIT_NO_SCENES
    except TransientIOError as exc:
        say("[bold red]I/O error (transient, retry later):[/]", str(exc))
        return EXIT_TRANSIENT
    except RunCancelled as exc:  # SIGINT / SIGTERM: 128 + the signal, as a shell reports it
        say("[yellow]cancelled:[/]", str(exc))
        return exc.exit_code
    except TerrapipeError as exc:
        say("[bold red]error:[/]", str(exc))
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        stderr.print("aborted")
        return 130
    except (click.ClickException, typer.TyperException) as exc:
        # Usage errors (`--tile-px`, a missing argument) carry their own message and exit code
        # (2). typer ships its own copy of click, whose exceptions derive from TyperException.
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            say("[bold red]error:[/]", str(exc))
        return int(exc.exit_code)
    except Exception as exc:
        if not is_transient(exc):
            raise  # a bug: the traceback says where
        say("[bold red]I/O error (transient, retry later):[/]", f"{type(exc).__name__}: {exc}")
        return EXIT_TRANSIENT


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
