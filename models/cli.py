"""CLI commands of the models: ``terrapipe models``, ``terrapipe train NAME``, ``terrapipe eval
dehaze|super_resolution`` (JSON on stdout)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

ArchiveOpt = Annotated[
    str | None, typer.Option(help="Demo archive root (default: the embedded demo archive).")
]
WeightsOpt = Annotated[
    str | None, typer.Option(help="Weights file to score (default: the committed weights).")
]

train_app = typer.Typer(
    help="Train a model from the demo archive and the real scenes; writes weights and card.",
    no_args_is_help=True,
)


def models() -> None:
    """List the shipped models: scale, bands, weights checksum and held-out metrics."""
    from models.registry import list_models, model_spec
    from models.weights import card_sha256, read_card

    rows = []
    for name in list_models():
        spec = model_spec(name)
        row: dict[str, object] = {
            "model": name,
            "scale": spec.scale,
            "halo_px": spec.halo,
            "in_bands": list(spec.in_bands),
            "out_bands": list(spec.out_bands),
        }
        try:
            card = read_card(name)
            row["sha256"] = card_sha256(card)
            row["parameters"] = card["properties"].get("mlm:total_parameters")
            row["metrics"] = card["properties"].get("terrapipe:metrics", {})
        except Exception as exc:  # no card committed yet
            row["card"] = str(exc)
        rows.append(row)
    print(json.dumps(rows))


StepsOpt = Annotated[int | None, typer.Option(help="Adam steps (default: the model's).")]


@train_app.command("dehaze")
def train_dehaze(
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    steps: StepsOpt = None,
    minutes: Annotated[float | None, typer.Option(help="Stop after this wall time.")] = None,
    archive: ArchiveOpt = None,
) -> None:
    """Train the dehaze CNN (CPU, 2 threads); prints the training summary as JSON."""
    from models.dehaze.train import train_dehaze as train

    extra: dict[str, Any] = {"steps": steps} if steps else {}
    print(json.dumps(train(seed=seed, minutes=minutes, archive=archive, **extra), default=str))


@train_app.command("super_resolution")
def train_super_resolution(
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    steps: StepsOpt = None,
    minutes: Annotated[float | None, typer.Option(help="Stop after this wall time.")] = None,
    archive: ArchiveOpt = None,
) -> None:
    """Train the 4x super-resolution CNN (CPU, 2 threads); prints the summary as JSON."""
    from models.super_resolution.train import train_super_resolution as train

    extra: dict[str, Any] = {"steps": steps} if steps else {}
    print(json.dumps(train(seed=seed, minutes=minutes, archive=archive, **extra), default=str))


def eval_dehaze(archive: ArchiveOpt = None, weights: WeightsOpt = None) -> None:
    """Held-out dehaze metrics (PSNR, SSIM, SAM, ERGAS, NDVI error) of the hazy input, the
    classical dehaze and the learned model; prints JSON."""
    from models.dehaze.evaluate import evaluate_dehaze

    print(json.dumps(evaluate_dehaze(archive=archive, weights=weights), default=str))


def eval_super_resolution(
    archive: ArchiveOpt = None,
    weights: WeightsOpt = None,
    scene: Annotated[
        list[str] | None,
        typer.Option(
            help="A 10 m S2 GeoTIFF (B02, B03, B04, B08) to score as well, under every "
            "protocol (repeat for several)."
        ),
    ] = None,
    scene_bands: Annotated[
        str | None,
        typer.Option(
            help="The bands of every --scene in file order, for files whose band descriptions "
            "do not name them: e.g. B02,B03,B04,B08, or "
            "B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B10,B11,B12 for a 13-band L1C stack."
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option(help="Score the demo hold-out (--no-demo: skip it).")
    ] = True,
    figures: Annotated[
        str | None,
        typer.Option(
            help="Folder for one picture a --scene: input, bicubic, network and truth under "
            "every protocol."
        ),
    ] = None,
) -> None:
    """Super-resolution metrics vs bicubic on real S2 (40 m -> 10 m), the held-out demo block
    and any given scenes; prints JSON."""
    from models.super_resolution.evaluate import evaluate_super_resolution
    from pipelines.geotiff import parse_band_names

    names = parse_band_names(scene_bands, "--scene-bands") if scene_bands is not None else None
    result = evaluate_super_resolution(
        archive=archive,
        weights=weights,
        demo=demo,
        scenes=scene,
        scene_bands=names,
        figures=figures,
    )
    print(json.dumps(result, default=str))
