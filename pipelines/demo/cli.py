"""``terrapipe demo-archive``: generate the synthetic demo province archive."""

from __future__ import annotations

import typer


def demo_archive(
    size: str = typer.Option("demo", "--size", help="tiny | demo | bench"),
    seed: int = typer.Option(0, "--seed", help="generator seed (integer >= 0)"),
    out: str | None = typer.Option(
        None,
        "--out",
        help="archive root: local folder or s3:// URL (default: $TERRAPIPE_HOME/archive/SIZE)",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing archive"),
    processes: int = typer.Option(2, "--processes", help="worker processes"),
) -> None:
    """Generate the demo province archive (S2 L2A, S1 RTC, DEM as COGs + STAC, truth layers)."""
    from rich.console import Console
    from rich.markup import escape

    from pipelines.demo.build import build_archive

    info = build_archive(out, size=size, seed=seed, overwrite=overwrite, processes=processes)
    console = Console()
    if info.skipped:
        console.print(
            f"archive already complete at {escape(info.url)} (size={escape(size)}, seed={seed}); "
            "use --overwrite to rebuild"
        )
        return
    counts = ", ".join(f"{k}: {v}" for k, v in info.items.items())
    url = escape(info.url)
    console.print(f"archive written to {url} in {info.elapsed_s:.1f} s ({escape(counts)})")


def attach(app: typer.Typer) -> None:
    """Attach ``demo-archive`` to the terrapipe CLI."""
    app.command("demo-archive")(demo_archive)
