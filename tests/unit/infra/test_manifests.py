"""infra/k8s: the rendered manifests validate against the vendored schemas (dask-kubernetes
CRDs, Kubernetes object schemas), the values' Airflow options exist, and the pieces refer to
each other (Secret, connection, pools, province configs)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer import Typer
from typer.testing import CliRunner

from operators import provision
from operators.production import DeploymentSettings
from pipelines.deploy import (
    CONFIGS_MOUNT,
    INFRA_K8S,
    TEMPLATES,
    DeploySettings,
    Schemas,
    airflow_config_errors,
    deploy_render,
    manifest_errors,
    render,
)
from pipelines.errors import BadInputError
from pipelines.stages.registry import registry_groups

SCHEMAS = INFRA_K8S / "schemas"
LOGS = "s3://eo-logs/airflow"


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas(SCHEMAS)


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A province config folder: one config whose AOI is a GeoJSON file beside it."""
    folder = tmp_path / "configs"
    folder.mkdir()
    ring = [[114.10, 30.50], [114.20, 30.50], [114.20, 30.60], [114.10, 30.60], [114.10, 30.50]]
    (folder / "hubei.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    (folder / "hubei.yaml").write_text(
        "province: hubei\naoi: hubei.geojson\ncrs: EPSG:32650\nstart: 2025-07-01\n"
        "end: 2025-07-31\nproducts: [cloud_mask]\n"
        "stac: {url: 'https://stac.example.org/v1'}\nstore: s3://eo-products/hubei\n"
    )
    return folder


def docs(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def rendered(configs: Path | None = None, **settings: Any) -> dict[str, str]:
    return render(DeploySettings(logs_url=LOGS, **settings), configs)


def test_vendored_files_match_their_provenance() -> None:
    """Each file copied unchanged has the sha256 PROVENANCE.md records for it."""
    table = (SCHEMAS / "PROVENANCE.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", table, flags=re.M)
    assert len(rows) >= 5  # the five files above, and the chart values schema once vendored
    for name, digest in rows:
        assert hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest() == digest, name


def test_every_rendered_manifest_validates(configs: Path, schemas: Schemas) -> None:
    files = rendered(configs, schedule_env={"TERRAPIPE_CATCHUP": True})
    assert list(files) == list(TEMPLATES)
    assert manifest_errors(files, schemas) == []
    kinds = [
        d["kind"]
        for name, text in files.items()
        if name != "airflow-values.yaml"
        for d in docs(text)
    ]
    assert kinds == ["Secret", "ConfigMap", "DaskCluster", "DaskWorkerGroup", "Job"]


def test_gpu_limit_as_an_integer_fails_the_worker_group_crd(schemas: Schemas) -> None:
    group = docs(rendered()["dask-cluster.yaml"])[1]
    assert schemas.errors(group) == []
    bad = copy.deepcopy(group)
    bad["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    (error,) = schemas.errors(bad)
    assert error.startswith("spec.worker.spec.containers.0.resources.limits.nvidia.com/gpu: 1 ")
    assert "'string'" in error


def test_unknown_fields_and_wrong_types_are_named(schemas: Schemas) -> None:
    cluster, _ = docs(rendered()["dask-cluster.yaml"])
    cluster["spec"]["worker"]["replicas"] = "8"
    cluster["spec"]["worker"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    errors = schemas.errors(cluster)
    assert any(e.startswith("spec.worker.replicas: '8' is not of type 'integer'") for e in errors)
    assert any("'imagePulPolicy' was unexpected" in e for e in errors)
    secret = docs(rendered()["object-store-secret.yaml"])[0]
    secret["stringData"]["AWS_REGION"] = 1
    assert schemas.errors(secret) == ["stringData.AWS_REGION: 1 is not of type 'string', 'null'"]
    job = docs(rendered()["provision-job.yaml"])[0]
    job["spec"]["template"]["spec"]["restartPolicy"] = ["Never"]
    assert schemas.errors(job)[0].startswith("spec.template.spec.restartPolicy: ['Never']")


def test_a_kind_without_a_vendored_schema_is_an_error(schemas: Schemas) -> None:
    (error,) = schemas.errors({"apiVersion": "apps/v1", "kind": "Deployment"})
    assert "no vendored schema for ('apps/v1', 'Deployment')" in error


def test_values_use_options_of_the_installed_airflow() -> None:
    values = docs(rendered()["airflow-values.yaml"])[0]
    assert airflow_config_errors(values) == []
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"] == LOGS
    values["config"]["logging"]["remote_log_folder"] = LOGS
    values["config"]["no_such_section"] = {"x": 1}
    assert airflow_config_errors(values) == [
        "config.logging.remote_log_folder: not an option of [logging]",
        "config.no_such_section: not a section of Airflow's configuration",
    ]


def test_a_vendored_chart_values_schema_validates_the_values(tmp_path: Path) -> None:
    """Once the Airflow chart's values.schema.json is vendored, the rendered values are checked
    against it (a reduced schema in the chart's form: draft 7, the executor an enum)."""
    import shutil

    folder = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, folder)
    assert Schemas(folder).airflow_values is None  # not vendored: option names only
    chart = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "executor": {
                "type": "string",
                "enum": ["LocalExecutor", "CeleryExecutor", "KubernetesExecutor"],
            },
            "images": {
                "type": "object",
                "properties": {"airflow": {"type": "object", "required": ["repository"]}},
            },
        },
    }
    (folder / Schemas.AIRFLOW_VALUES).parent.mkdir()
    (folder / Schemas.AIRFLOW_VALUES).write_text(json.dumps(chart))
    schemas = Schemas(folder)
    files = rendered()
    assert manifest_errors(files, schemas) == []
    values = docs(files["airflow-values.yaml"])[0]
    values["executor"] = "SequentialExecutor"
    del values["images"]["airflow"]["repository"]
    errors = manifest_errors({"airflow-values.yaml": yaml.safe_dump(values)}, schemas)
    assert len(errors) == 2
    assert errors[0].startswith("airflow-values.yaml: executor: 'SequentialExecutor' is not one")
    assert "images.airflow: 'repository' is a required property" in errors[1]


def test_the_pieces_refer_to_each_other(configs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = rendered(configs, namespace="eo", cluster="eo-dask", gpu_workers=3, tag="1.2.3")
    secret = docs(files["object-store-secret.yaml"])[0]
    values = docs(files["airflow-values.yaml"])[0]
    cluster, gpu = docs(files["dask-cluster.yaml"])
    configmap = docs(files["province-configs.yaml"])[0]
    job = docs(files["provision-job.yaml"])[0]
    # the object-store Secret: placeholders to fill in, read by the Airflow and the Dask pods
    assert secret["stringData"]["AWS_ACCESS_KEY_ID"].startswith("<fill in")
    assert yaml.safe_load(values["extraEnvFrom"]) == [
        {"secretRef": {"name": secret["metadata"]["name"]}}
    ]
    for group in (cluster, gpu):
        (container,) = group["spec"]["worker"]["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    # one image everywhere; the GPU group runs its CUDA build and declares the GPU resource
    assert values["images"]["airflow"] == {
        "repository": "ghcr.io/terrapipe/terrapipe",
        "tag": "1.2.3",
        "pullPolicy": "IfNotPresent",
    }
    assert cluster["spec"]["worker"]["spec"]["containers"][0]["image"].endswith(":1.2.3")
    gpu_container = gpu["spec"]["worker"]["spec"]["containers"][0]
    assert gpu_container["image"].endswith(":1.2.3-gpu")
    assert gpu_container["args"][gpu_container["args"].index("--resources") + 1] == "GPU=1"
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"] == "eo-dask"
    assert gpu["spec"]["worker"]["replicas"] == 3
    # dask_default, read as Airflow reads a connection, is the cluster's scheduler Service
    from airflow.models.connection import Connection

    env = {e["name"]: e["value"] for e in values["env"]}
    conn = Connection(conn_id="dask_default", uri=env["AIRFLOW_CONN_DASK_DEFAULT"])
    assert (conn.host, conn.port) == ("eo-dask-scheduler.eo.svc", 8786)
    service = cluster["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == "eo-dask"
    assert [p["port"] for p in service["ports"] if p["name"] == "tcp-comm"] == [8786]
    # remote logs through an aws connection (credentials from the Secret's environment)
    logs_conn = values["config"]["logging"]["remote_log_conn_id"]
    assert json.loads(env[f"AIRFLOW_CONN_{logs_conn.upper()}"]) == {"conn_type": "aws"}
    # tasks check the gpu pool through the REST API of the chart's api-server
    api = Connection(conn_id="airflow_api", uri=env["AIRFLOW_CONN_AIRFLOW_API"])
    assert (api.host, api.port) == ("airflow-api-server.eo.svc", 8080)
    # the Job provisions the registry's pools (the gpu pool: one slot per GPU worker) and the
    # connection through operators.provision
    pools = {g.pool for g in registry_groups() if g.pool != "default_pool"}
    assert pools == {provision.GPU_POOL}
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "operators.provision"]
    assert command[3:] == ["tcp://eo-dask-scheduler.eo.svc:8786", "--gpu-slots", "3"]
    seen: list[tuple[str, int | None]] = []
    monkeypatch.setattr(provision, "provision", lambda a, s=None: seen.append((a, s)) or {})
    provision.main(command[3:])  # its own parser, with what it would write recorded
    assert seen == [("tcp://eo-dask-scheduler.eo.svc:8786", 3)]
    # the province configs: mounted where TERRAPIPE_CONFIG_DIR points, one scheduled DAG each
    assert env["TERRAPIPE_CONFIG_DIR"] == CONFIGS_MOUNT
    assert values["volumeMounts"][0]["mountPath"] == CONFIGS_MOUNT
    assert values["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    assert sorted(configmap["data"]) == ["hubei.geojson", "hubei.yaml"]


def test_configmap_folder_gives_one_dag_per_config(configs: Path, tmp_path: Path) -> None:
    """The ConfigMap's files, as mounted, are what the DAG processor reads."""
    data = docs(rendered(configs)["province-configs.yaml"])[0]["data"]
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for name, text in data.items():
        (mounted / name).write_text(text)
    found = DeploymentSettings.from_env({"TERRAPIPE_CONFIG_DIR": str(mounted)}).province_configs()
    assert list(found) == ["province_production__hubei"]
    from pipelines.config import load_config

    assert load_config(found["province_production__hubei"]).province == "hubei"


def test_schedule_settings_reach_the_dag_processor() -> None:
    env_in = {
        "TERRAPIPE_SCHEDULE": "0 0 1 */3 *",
        "TERRAPIPE_CATCHUP": True,
        "TERRAPIPE_MAX_ACTIVE_RUNS": 2,
        "TERRAPIPE_START_DATE": "2024-01-01",
    }
    settings = DeploySettings.from_mapping({"logs_url": LOGS, "schedule_env": env_in})
    values = docs(render(settings)["airflow-values.yaml"])[0]
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env.pop("TERRAPIPE_CONFIG_DIR") == CONFIGS_MOUNT  # a folder of the pods
    parsed = DeploymentSettings.from_env(env)
    assert parsed.schedule == "0 0 1 */3 *"
    assert parsed.catchup is True
    assert parsed.max_active_runs == 2
    assert parsed.start_date.year == 2024


@pytest.mark.parametrize(
    ("raw", "field", "valid"),
    [
        ({"logs_url": LOGS, "gpu_wokers": 2}, "settings.gpu_wokers", "one of the keys"),
        ({}, "logs_url", "s3://bucket/prefix"),
        ({"logs_url": "/var/log"}, "logs_url", "s3://bucket/prefix"),
        ({"logs_url": LOGS, "gpu_workers": 0}, "gpu_workers", "a positive integer"),
        ({"logs_url": LOGS, "namespace": "EO_prod"}, "namespace", "a DNS label"),
        ({"logs_url": LOGS, "tag": "v 1"}, "tag", "an image tag"),
        ({"logs_url": LOGS, "dask_address": "dask:8786"}, "dask_address", "tcp://host:port"),
        (
            {"logs_url": LOGS, "schedule_env": {"TERRAPIPE_CATCHUP": "maybe"}},
            "TERRAPIPE_CATCHUP",
            "true or false",
        ),
        (
            {"logs_url": LOGS, "schedule_env": {"TERRAPIPE_HOME": "/x"}},
            "schedule_env.TERRAPIPE_HOME",
            "TERRAPIPE_SCHEDULE",
        ),
    ],
)
def test_bad_settings_name_the_field(raw: dict[str, Any], field: str, valid: str) -> None:
    with pytest.raises(BadInputError) as err:
        DeploySettings.from_mapping(raw)
    assert err.value.field == field
    assert valid in err.value.expected


def test_a_bad_province_config_fails_the_render(configs: Path) -> None:
    (configs / "hubei.yaml").write_text(
        (configs / "hubei.yaml").read_text().replace("EPSG:32650", "EPSG:4326")
    )
    with pytest.raises(BadInputError) as err:
        rendered(configs)
    assert err.value.field == "crs"


def test_deploy_render_command_writes_valid_manifests(configs: Path, tmp_path: Path) -> None:
    app = Typer()
    app.command()(deploy_render)
    settings = tmp_path / "deploy.yaml"
    settings.write_text(
        yaml.safe_dump(
            {"logs_url": LOGS, "namespace": "eo", "schedule_env": {"TERRAPIPE_CATCHUP": True}}
        )
    )
    out = tmp_path / "out"
    args = [str(out), "--settings", str(settings), "--configs", str(configs), "--tag", "2.0.0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(TEMPLATES)
    secret = docs((out / "object-store-secret.yaml").read_text())[0]
    assert secret["metadata"]["namespace"] == "eo"
    assert docs((out / "airflow-values.yaml").read_text())[0]["images"]["airflow"]["tag"] == "2.0.0"
    files = {p.name: p.read_text() for p in out.iterdir()}
    assert manifest_errors(files, Schemas(SCHEMAS)) == []


def test_the_example_settings_render_valid_manifests(schemas: Schemas) -> None:
    settings = DeploySettings.load(INFRA_K8S / "settings.example.yaml")
    assert settings.schedule_env["TERRAPIPE_CATCHUP"] == "true"
    assert manifest_errors(render(settings), schemas) == []


def test_deploy_render_without_a_checkout_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as err:
        render(DeploySettings(logs_url=LOGS), None, tmp_path / "nowhere")
    assert err.value.field == "infra"
