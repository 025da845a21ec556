"""Model infrastructure: checksummed weights and cards, seamless tiling, per-worker loading,
GPU routing of the learned stages (all on CPU, with randomly initialised networks)."""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from models import weights as weights_io
from models.registry import get_model, list_models, model_spec
from models.tiling import predict_tiled
from pipelines.errors import BadInputError


@pytest.fixture
def model_dirs(tmp_path, monkeypatch):
    """Weights and cards of both models, randomly initialised, in a temporary folder."""
    monkeypatch.setattr(weights_io, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(weights_io, "CARDS_DIR", tmp_path / "cards")
    from models import serving

    serving._process_cache.clear()
    torch.manual_seed(0)
    for name in list_models():
        net = model_spec(name).build_network()
        with torch.no_grad():  # a visible, non-identity correction
            for p in net.parameters():
                p.add_(0.01 * torch.randn_like(p))
        weights_io.save_model(name, net, {"mlm:architecture": "test", "training": {}})
    yield tmp_path
    serving._process_cache.clear()


def _reflectance(shape, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.02, 0.3, shape).astype("float32")
    # smooth structure so the networks see edges and gradients
    return (base + 0.05 * np.sin(np.arange(shape[-1]) / 7.0)).astype("float32")


def test_the_committed_checksum_is_read_again_only_when_the_card_changes(tmp_path, monkeypatch):
    """Staleness checks ask a card's checksum once per product marker: the card is parsed once,
    and again when its file changes (a retrained model); None without a card."""
    import os

    monkeypatch.setattr(weights_io, "CARDS_DIR", tmp_path)
    card = tmp_path / "dehaze.json"

    def write(checksum: str, mtime_ns: int) -> None:
        card.write_text(json.dumps({"assets": {"weights": {"terrapipe:sha256": checksum}}}))
        os.utime(card, ns=(mtime_ns, mtime_ns))

    assert weights_io.committed_sha256("dehaze") is None
    write("a" * 64, 10**18)
    reads = []
    read = weights_io.read_card
    monkeypatch.setattr(weights_io, "read_card", lambda name: reads.append(name) or read(name))
    assert weights_io.committed_sha256("dehaze") == "a" * 64
    assert weights_io.committed_sha256("dehaze") == "a" * 64
    assert reads == ["dehaze"]
    write("b" * 64, 2 * 10**18)
    assert weights_io.committed_sha256("dehaze") == "b" * 64
    assert reads == ["dehaze", "dehaze"]


def test_registry_lists_both_models_and_names_the_valid_ones():
    assert {"dehaze", "super_resolution"} <= set(list_models())
    with pytest.raises(BadInputError, match="dehaze"):
        model_spec("unet")


@pytest.mark.parametrize("name", ["dehaze", "super_resolution"])
def test_tiled_inference_equals_whole_image_inference(name, model_dirs):
    spec = model_spec(name)
    net = get_model(name, device="cpu")
    if name == "super_resolution":
        from models.super_resolution.network import pack_inputs

        x = pack_inputs([_reflectance((4, 70, 90), s) for s in range(2)], None)
    else:
        x = _reflectance((4, 150, 170))
    with torch.inference_mode():
        whole = net(torch.from_numpy(x)[None])[0].numpy()
    tiled = predict_tiled(net, x, scale=spec.scale, halo=spec.halo, tile=48, blend=8)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() < 1e-3  # the bar: no seam above 1e-3 reflectance


def test_predict_tiled_refuses_nan_and_integer_input():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    with pytest.raises(BadInputError, match="finite"):
        predict_tiled(net, np.full((1, 8, 8), np.nan, "float32"))
    with pytest.raises(BadInputError, match="dtype"):
        predict_tiled(net, np.zeros((1, 8, 8), "uint16"))


def test_card_is_an_mlm_item_with_the_weights_checksum(model_dirs):
    card = json.loads((model_dirs / "cards" / "dehaze.json").read_text())
    assert any("mlm" in ext for ext in card["stac_extensions"])
    asset = card["assets"]["weights"]
    sha = weights_io.sha256_file(model_dirs / "weights" / "dehaze.pt")
    assert asset["terrapipe:sha256"] == sha and asset["file:checksum"] == "1220" + sha
    assert "mlm:model" in asset["roles"]
    assert card["properties"]["mlm:total_parameters"] > 0
    sidecar = (model_dirs / "weights" / "dehaze.pt.sha256").read_text().split()
    assert sidecar == [sha, "dehaze.pt"]


def test_weights_whose_checksum_does_not_match_are_refused(model_dirs):
    path = model_dirs / "weights" / "dehaze.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match="sha256") as info:
        get_model("dehaze")
    assert info.value.field == "weights"
    other = model_dirs / "other.pt"
    other.write_bytes(b"not a state dict")
    with pytest.raises(BadInputError, match="sha256"):
        get_model("dehaze", weights=other)


def _s2(times=2, size=40, bands=("B02", "B03", "B04", "B08", "B11", "B12")):
    data = np.stack([_reflectance((len(bands), size, size), t) for t in range(times)])
    data[0, :, :3, :5] = np.nan  # nodata corner on the first date
    return xr.DataArray(
        da.from_array(data, chunks=(1, -1, size, size)),
        dims=("time", "band", "y", "x"),
        coords={
            "time": pd.date_range("2025-07-01", periods=times, freq="5D").values,
            "band": list(bands),
            "y": 3_800_000.0 - 10.0 * (np.arange(size) + 0.5),
            "x": 400_000.0 + 10.0 * (np.arange(size) + 0.5),
        },
    )


def test_dehaze_learned_stage_keeps_grid_and_nodata(model_dirs):
    from pipelines.stages.learned import dehaze_learned

    s2 = _s2()
    out = dehaze_learned(s2)
    assert isinstance(out.data, da.Array)  # lazy
    with dask.config.set(scheduler="synchronous"):
        values = out.values
    assert out.dims == ("time", "band", "y", "x") and list(out["band"].values) == [
        "B02",
        "B03",
        "B04",
        "B08",
    ]
    assert np.isnan(values[0, :, :3, :5]).all() and np.isfinite(values[1]).all()
    net = get_model("dehaze", device="cpu")
    x = s2.isel(time=1).sel(band=["B02", "B03", "B04", "B08"]).values
    with torch.inference_mode():
        direct = net(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(values[1], np.maximum(direct, 0), atol=1e-4)


def test_super_resolution_stage_grid_is_four_times_finer(model_dirs):
    from pipelines.stages.learned import super_resolution

    s2 = _s2(times=3, size=24)
    s1 = xr.DataArray(
        np.full((1, 2, 24, 24), -12.0, "float32"),
        dims=("time", "band", "y", "x"),
        coords={"time": s2["time"].values[:1], "band": ["VV", "VH"], "y": s2.y, "x": s2.x},
    )
    out = super_resolution(s2, s1)
    assert out.sizes == {"time": 3, "band": 4, "y": 96, "x": 96}
    assert out["x"].values[0] == pytest.approx(400_000.0 + 1.25)
    assert out["y"].values[0] == pytest.approx(3_800_000.0 - 1.25)
    with dask.config.set(scheduler="synchronous"):
        values = out.values
    assert np.isnan(values[0, :, :12, :20]).all()
    assert np.isfinite(values[1:]).all()
    # one date and no SAR works too
    single = super_resolution(s2.isel(time=[2]))
    with dask.config.set(scheduler="synchronous"):
        assert np.isfinite(single.values).all()


def test_learned_stages_refuse_bad_input(model_dirs):
    from pipelines.stages.learned import dehaze_learned, super_resolution

    with pytest.raises(BadInputError, match="B08"):
        dehaze_learned(_s2(bands=("B02", "B03", "B04")))
    with pytest.raises(BadInputError, match="dtype"):
        dehaze_learned((_s2() * 10000).astype("uint16"))
    s2 = _s2(size=24)
    shifted = xr.DataArray(
        np.zeros((1, 2, 24, 24), "float32"),
        dims=("time", "band", "y", "x"),
        coords={"time": s2.time.values[:1], "band": ["VV", "VH"], "y": s2.y + 10, "x": s2.x},
    )
    with pytest.raises(BadInputError, match=r"s1\.y"):
        super_resolution(s2, shifted)


def _cluster_with_a_gpu_worker():
    """An in-process LocalCluster: one CPU worker and one worker declaring GPU=1."""
    from distributed import LocalCluster, Worker

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    )
    cluster.worker_spec["gpu"] = {
        "cls": Worker,
        "options": {"nthreads": 1, "resources": {"GPU": 1}},
    }
    cluster.sync(cluster._correct_state)
    return cluster


def test_model_tasks_run_on_the_gpu_worker_which_loads_the_model_once(model_dirs):
    from distributed import Client, get_task_stream

    from models.serving import ensure_model_plugin, worker_model_loads
    from pipelines.stages.learned import dehaze_learned

    cluster = _cluster_with_a_gpu_worker()
    with cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        ensure_model_plugin(client)
        ensure_model_plugin(client)  # idempotent: no second registration, no reload
        gpu_address = next(
            addr for addr, w in client.scheduler_info()["workers"].items() if w["resources"]
        )
        with dask.annotate(resources={"GPU": 1}):
            out = dehaze_learned(_s2(times=4, size=32))
        with get_task_stream(client) as stream:
            client.compute(out, optimize_graph=False).result()
        model_tasks = [t for t in stream.data if "dehaze_block" in t["key"][0]]
        assert len(model_tasks) == 4
        assert {t["worker"] for t in model_tasks} == {gpu_address}
        loads = client.run(worker_model_loads)
        assert loads[gpu_address] == {"dehaze": 1}
        assert all(v == {} for a, v in loads.items() if a != gpu_address)


def test_stage_cli_runs_the_learned_stages_on_geotiffs(model_dirs, real_data, tmp_path, capsys):
    """`terrapipe stage dehaze --method learned` and `terrapipe stage super_resolution` on real
    eo-learn scenes: the 4x GeoTIFF's transform is the input's at a quarter of the pixel size."""
    import rasterio

    from pipelines.cli import main
    from tests.conftest import L1C_BANDS
    from tests.unit.pipelines.stages.test_cli import _write

    scenes = np.load(real_data / "eolearn-testeopatch" / "REFERENCE_SCENES.npy")
    keep = ["B02", "B03", "B04", "B08", "B11", "B12"]
    idx = [L1C_BANDS.index(b) for b in keep]
    paths = []
    for k in (2, 3):
        dn = np.round(scenes[k][..., idx].transpose(2, 0, 1) * 10000).astype("uint16")
        paths.append(_write(tmp_path / f"k{k}.tif", dn, keep))
    sar = _write(tmp_path / "s1.tif", np.full((2, 101, 100), -11.0, "float32"), ["VV", "VH"])

    def run(*args: str) -> dict:
        assert main(["stage", *args]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    out = run(
        "dehaze", "--method", "learned", "--s2", str(paths[0]), "--out", str(tmp_path / "d.tif")
    )
    assert out["stage"] == "dehaze_learned"
    sr_out = tmp_path / "sr.tif"
    run(
        "super_resolution",
        "--s2",
        str(paths[0]),
        "--s2",
        str(paths[1]),
        "--s1",
        str(sar),
        "--out",
        str(sr_out),
    )
    with rasterio.open(paths[0]) as src, rasterio.open(sr_out) as dst:
        assert dst.crs == src.crs
        assert dst.width == 4 * src.width and dst.height == 4 * src.height
        assert dst.transform.a == pytest.approx(src.transform.a / 4)
        assert dst.transform.c == pytest.approx(src.transform.c)
        assert dst.transform.f == pytest.approx(src.transform.f)
    one = tmp_path / "sr1.tif"
    run("super_resolution", "--s2", str(paths[0]), "--out", str(one))  # one date, no SAR
    with rasterio.open(one) as dst:
        assert dst.count == 4 and np.isfinite(dst.read()).all()


def test_learned_products_are_written_on_their_grids_with_model_checksums(
    model_dirs, tiny_archive, tmp_path
):
    """dehaze_learned and super_resolution through the production runner: one GPU group, the
    4x cube on a grid 4x finer with the same tiles, model checksums in the STAC items."""
    from distributed import Client

    from pipelines import products
    from pipelines.engine.plan import make_plan, stac_api_for
    from pipelines.engine.run import prepare_products, process_batch
    from tests.integration.test_production import tiny_config

    config = tiny_config(
        tiny_archive, str(tmp_path / "store"), products=["dehaze_learned", "super_resolution"]
    )
    with stac_api_for(config.stac) as api:
        plan = make_plan(config, api)
    assert [g.pool for g in plan.groups] == ["gpu"]
    prepare_products(plan, config.store)
    cluster = _cluster_with_a_gpu_worker()
    with cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        group = plan.groups[0].name
        first = [
            process_batch(plan, config.store, group, i, client) for i in range(len(plan.batches))
        ]
        again = [
            process_batch(plan, config.store, group, i, client) for i in range(len(plan.batches))
        ]
    assert sum(m.totals.written for m in first) > 0
    assert sum(m.totals.written for m in again) == 0
    assert sum(m.totals.skipped for m in again) > 0
    base = products.open_product(config.store, "tiny", "dehaze_learned")
    sr = products.open_product(config.store, "tiny", "super_resolution")
    assert sr.sizes["y"] == 4 * base.sizes["y"] and sr.sizes["x"] == 4 * base.sizes["x"]
    assert float(sr["x"][0]) == pytest.approx(float(base["x"][0]) - 5.0 + 1.25)
    assert np.isfinite(sr["B04"].values).any() and np.isfinite(base["B08"].values).any()
    markers = list((tmp_path / "store" / "tiny" / "super_resolution" / "items").rglob("*.json"))
    item = json.loads(markers[0].read_text())
    sha = weights_io.sha256_file(model_dirs / "weights" / "super_resolution.pt")
    assert json.dumps(item["properties"]).count(sha) >= 1
