"""``terrapipe deploy-render``: the Kubernetes manifests of a deployment, filled from its settings
and checked against the vendored schemas before they are written.

The templates (``infra/k8s/templates``) and the schemas (``infra/k8s/schemas``) live in the
checkout, beside the Dockerfile that builds the image they name: this command renders a
deployment from a checkout, it is not part of the installed package's runtime. Templates hold
``${name}`` fields only (no logic); every value is written as JSON, which YAML reads back as the
same string, number or list, so no setting can break the YAML around it.

Outputs (``OUT/``): ``airflow-values.yaml`` (values of the official Airflow Helm chart),
``dask-cluster.yaml`` (DaskCluster + GPU DaskWorkerGroup), ``object-store-secret.yaml`` (a
Secret with placeholder keys to fill in), ``province-configs.yaml`` (a ConfigMap of the province
configs, mounted as ``TERRAPIPE_CONFIG_DIR``), ``provision-job.yaml`` (a Job that creates the
``gpu`` pool and the ``dask_default`` connection with operators/provision.py). See docs/deploy.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from pipelines import __version__
from pipelines.errors import BadInputError

#: The checkout's ``infra/k8s`` (templates and schemas).
INFRA_K8S = Path(__file__).resolve().parents[1] / "infra" / "k8s"
#: Rendered files, in the order they are applied.
TEMPLATES = (
    "object-store-secret.yaml",
    "province-configs.yaml",
    "dask-cluster.yaml",
    "airflow-values.yaml",
    "provision-job.yaml",
)
#: Where the province configs ConfigMap is mounted in the Airflow containers.
CONFIGS_MOUNT = "/opt/terrapipe/configs"
#: Airflow connection of the remote task logs (credentials from the object-store Secret's
#: environment, through boto3's default chain).
LOGS_CONN_ID = "terrapipe_object_store"
#: Kubernetes caps a ConfigMap at 1 MiB (etcd's value limit).
CONFIGMAP_MAX_BYTES = 1024 * 1024
#: The scheduling settings a deployment may pass to the DAG processor
#: (operators.production.DeploymentSettings reads them).
SCHEDULE_ENV = (
    "TERRAPIPE_SCHEDULE",
    "TERRAPIPE_START_DATE",
    "TERRAPIPE_CATCHUP",
    "TERRAPIPE_MAX_ACTIVE_RUNS",
    "TERRAPIPE_MAX_ACTIVE_TASKS",
    "TERRAPIPE_TASK_TIMEOUT_MIN",
)
#: Dask's memory limit as a share of the worker pod's memory: the rest is left to the nanny
#: process and the memory the worker does not account for, so Dask spills and pauses before the
#: kernel's OOM killer ends the pod.
DASK_MEMORY_SHARE = 0.875

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE = re.compile(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
_HTTP_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_DASK_ADDRESS = re.compile(r"^(tcp|tls)://[A-Za-z0-9.-]+:[0-9]{1,5}$")


@dataclass(frozen=True)
class DeploySettings:
    """The named settings of one deployment (a settings YAML has these keys).

    ``logs_url``: ``s3://bucket/prefix`` of the remote task logs (required). ``image``/``tag``:
    the image of infra/docker/Dockerfile (CPU build); ``gpu_tag``: its CUDA build (default
    ``<tag>-gpu``). Worker memory in GiB per pod. ``dask_address``: default the scheduler
    Service of the DaskCluster. ``release``: the Helm release of the Airflow chart (its metadata
    DB Secret is ``<release>-metadata`` unless ``metadata_secret`` is given). ``schedule_env``:
    ``TERRAPIPE_*`` scheduling settings for the DAG processor.
    """

    logs_url: str
    namespace: str = "terrapipe"
    image: str = "ghcr.io/terrapipe/terrapipe"
    tag: str = __version__
    gpu_tag: str = ""
    cluster: str = "terrapipe"
    cpu_workers: int = 8
    cpu_worker_threads: int = 4
    cpu_worker_memory_gib: int = 16
    gpu_workers: int = 2
    gpu_worker_threads: int = 2
    gpu_worker_memory_gib: int = 32
    dask_address: str = ""
    object_store_secret: str = "terrapipe-object-store"
    object_store_endpoint: str = "https://s3.amazonaws.com"
    object_store_region: str = "us-east-1"
    release: str = "airflow"
    metadata_secret: str = ""
    airflow_api_url: str = ""
    schedule_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.schedule_env, Mapping):
            raise BadInputError(
                "schedule_env", self.schedule_env, "a mapping of TERRAPIPE_* names to values"
            )
        env = {str(k): _env_text(v) for k, v in self.schedule_env.items()}
        object.__setattr__(self, "schedule_env", env)
        _check(self.logs_url, "logs_url", _S3_URL, "an s3://bucket/prefix URL")
        for name in ("namespace", "cluster", "object_store_secret", "release"):
            _check(getattr(self, name), name, _DNS_LABEL, "a DNS label (a-z, 0-9, '-'; <= 63)")
        if self.metadata_secret:
            _check(self.metadata_secret, "metadata_secret", _DNS_LABEL, "a Kubernetes name")
        _check(self.image, "image", _IMAGE, "an image repository, e.g. ghcr.io/org/terrapipe")
        for name in ("tag", "gpu_tag"):
            if name == "tag" or self.gpu_tag:
                _check(getattr(self, name), name, _TAG, "an image tag ([A-Za-z0-9_.-], <= 128)")
        for f in dataclasses.fields(self):
            if f.type == "int":
                value = getattr(self, f.name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise BadInputError(f.name, value, "a positive integer")
        if self.airflow_api_url:
            _check(self.airflow_api_url, "airflow_api_url", _HTTP_URL, "http(s)://host:port")
        if self.dask_address:
            _check(self.dask_address, "dask_address", _DASK_ADDRESS, "tcp://host:port")
        if not self.object_store_endpoint.startswith(("http://", "https://")):
            raise BadInputError(
                "object_store_endpoint", self.object_store_endpoint, "an http(s):// URL"
            )
        _check_schedule_env(self.schedule_env)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> DeploySettings:
        """Settings from a mapping (a settings YAML); unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in raw:
            if key not in names:
                raise BadInputError(f"settings.{key}", raw[key], f"one of the keys {names}")
        if "logs_url" not in raw:
            raise BadInputError("logs_url", None, "an s3://bucket/prefix URL of the task logs")
        return cls(**{**raw, "schedule_env": raw.get("schedule_env") or {}})

    @classmethod
    def load(cls, path: Path, **overrides: Any) -> DeploySettings:
        """Settings from a YAML file, then ``overrides`` that are not None."""
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BadInputError("settings", str(path), "a readable YAML file", str(exc)) from None
        if not isinstance(raw, dict):
            raise BadInputError("settings", str(path), "a YAML mapping of deployment settings")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_mapping(raw)

    @property
    def api_url(self) -> str:
        """Airflow's REST API as tasks reach it: ``airflow_api_url`` or the chart's api-server
        Service."""
        return self.airflow_api_url or f"http://{self.release}-api-server.{self.namespace}.svc:8080"

    @property
    def scheduler_address(self) -> str:
        """The Dask scheduler: ``dask_address`` or the DaskCluster's scheduler Service."""
        return self.dask_address or f"tcp://{self.cluster}-scheduler.{self.namespace}.svc:8786"


def _check(value: Any, name: str, pattern: re.Pattern[str], valid: str) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise BadInputError(name, value, valid)


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_schedule_env(env: Mapping[str, str]) -> None:
    """Only the scheduling names, with values operators.production accepts."""
    from operators.production import DeploymentSettings

    for name in env:
        if name not in SCHEDULE_ENV:
            raise BadInputError(f"schedule_env.{name}", env[name], f"one of {list(SCHEDULE_ENV)}")
    DeploymentSettings.from_env(env)


def province_configs(folder: Path | None) -> dict[str, str]:
    """File name -> text of every file of ``folder`` (none when None); each ``*.yaml`` /
    ``*.yml`` must be a valid province config. Files other than YAML (an AOI GeoJSON a config
    names by a relative path) travel with them."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise BadInputError("configs", str(folder), "a folder of province config YAML files")
    from pipelines.config import load_config

    files = {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}
    for name in files:
        if name.endswith((".yaml", ".yml")):
            load_config(folder / name)
    size = sum(len(text.encode()) for text in files.values())
    if size > CONFIGMAP_MAX_BYTES:
        raise BadInputError(
            "configs", str(folder), f"at most {CONFIGMAP_MAX_BYTES} bytes (a ConfigMap); {size}"
        )
    return files


def template_values(settings: DeploySettings, configs: Mapping[str, str]) -> dict[str, Any]:
    """The value of every ``${name}`` field of the templates."""
    s = settings
    slots = ["--gpu-slots", str(s.gpu_workers)]
    provision = ["python", "-m", "operators.provision", s.scheduler_address, *slots]
    env = {
        "AIRFLOW_CONN_DASK_DEFAULT": s.scheduler_address.replace("tcp://", "dask://", 1),
        f"AIRFLOW_CONN_{LOGS_CONN_ID.upper()}": json.dumps({"conn_type": "aws"}),
        "AIRFLOW_CONN_AIRFLOW_API": s.api_url,
        "TERRAPIPE_CONFIG_DIR": CONFIGS_MOUNT,
        **dict(sorted(s.schedule_env.items())),
    }
    return {
        "namespace": s.namespace,
        "cluster": s.cluster,
        "gpu_group": f"{s.cluster}-gpu",
        "image": s.image,
        "tag": s.tag,
        "image_cpu": f"{s.image}:{s.tag}",
        "image_gpu": f"{s.image}:{s.gpu_tag or s.tag + '-gpu'}",
        "cpu_workers": s.cpu_workers,
        "cpu_worker_threads": str(s.cpu_worker_threads),
        "cpu_worker_memory": f"{s.cpu_worker_memory_gib}Gi",
        "cpu_worker_memory_limit": _dask_memory(s.cpu_worker_memory_gib),
        "gpu_workers": s.gpu_workers,
        "gpu_worker_threads": str(s.gpu_worker_threads),
        "gpu_worker_memory": f"{s.gpu_worker_memory_gib}Gi",
        "gpu_worker_memory_limit": _dask_memory(s.gpu_worker_memory_gib),
        "dask_address": s.scheduler_address,
        "object_store_secret": s.object_store_secret,
        "object_store_endpoint": s.object_store_endpoint,
        "object_store_region": s.object_store_region,
        "metadata_secret": s.metadata_secret or f"{s.release}-metadata",
        "logs_url": s.logs_url,
        "logs_conn_id": LOGS_CONN_ID,
        "airflow_env": [{"name": k, "value": v} for k, v in env.items()],
        "configs_map": f"{s.cluster}-province-configs",
        "configs_dir": CONFIGS_MOUNT,
        "configs": dict(configs),
        "provision_job": f"{s.cluster}-provision",
        "provision_command": provision,
    }


def _dask_memory(gib: int) -> str:
    return f"{int(gib * 1024 * DASK_MEMORY_SHARE)}MiB"


class _Fields(string.Template):
    """``${name}`` only: ``$(VAR)`` (Kubernetes' own expansion) and ``$x`` are left as they are."""

    pattern = r"\$(?:\{(?P<braced>[a-z_][a-z0-9_]*)\}|(?P<escaped>(?!x)x)|(?P<named>(?!x)x)|(?P<invalid>(?!x)x))"  # type: ignore[assignment]  # noqa: E501


def render_text(template: str, values: Mapping[str, Any], name: str = "template") -> str:
    """``template`` with every ``${field}`` replaced by its value as JSON."""
    try:
        return _Fields(template).substitute({k: json.dumps(v) for k, v in values.items()})
    except KeyError as exc:
        field = exc.args[0]
        raise BadInputError(f"{name}: ${{{field}}}", field, f"one of {sorted(values)}") from None


def render(
    settings: DeploySettings, configs: Path | None = None, infra: Path = INFRA_K8S
) -> dict[str, str]:
    """File name -> rendered manifest text, for every template."""
    folder = infra / "templates"
    if not folder.is_dir():
        raise BadInputError(
            "infra", str(infra), "the infra/k8s folder of a terrapipe checkout (templates/)"
        )
    values = template_values(settings, province_configs(configs))
    return {n: render_text((folder / n).read_text(), values, n) for n in TEMPLATES}


# ---- validation ---------------------------------------------------------------------------------

K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = f"{K8S_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


class Schemas:
    """The vendored schemas (``infra/k8s/schemas``, see its PROVENANCE.md) by (apiVersion,
    kind): the Kubernetes objects' JSON schemas and the openAPIV3Schema of each
    dask-kubernetes CRD, the latter made strict about unknown fields as ``kubectl apply``'s
    default server-side field validation is; and, once vendored, the Airflow chart's values
    schema (``airflow-chart/values.schema.json``, :attr:`airflow_values`)."""

    AIRFLOW_VALUES = "airflow-chart/values.schema.json"
    """Where the Airflow Helm chart's ``values.schema.json`` goes (from the chart archive)."""

    def __init__(self, folder: Path = INFRA_K8S / "schemas") -> None:
        from referencing import Registry, Resource

        self.by_kind: dict[tuple[str, str], dict[str, Any]] = {}
        resources = []
        for path in sorted(folder.glob("kubernetes/*/*.json")):
            doc = json.loads(path.read_text())
            resources.append((doc["$id"], Resource.from_contents(doc)))
            for gvk in doc.get("x-kubernetes-group-version-kind", []):
                api = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
                self.by_kind[(api, gvk["kind"])] = {"$ref": doc["$id"]}
        for path in sorted(folder.glob("crds/*.yaml")):
            crd = yaml.safe_load(path.read_text())
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema["properties"] = {
                    **schema.get("properties", {}),
                    "apiVersion": {"const": f"{spec['group']}/{version['name']}"},
                    "kind": {"const": spec["names"]["kind"]},
                    "metadata": {"$ref": OBJECT_META},
                }
                schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind"})
                api = f"{spec['group']}/{version['name']}"
                self.by_kind[(api, spec["names"]["kind"])] = schema
        if not self.by_kind:
            raise BadInputError("schemas", str(folder), "a folder of vendored schemas")
        self.registry: Registry[Any] = Registry().with_resources(resources)
        values = folder / self.AIRFLOW_VALUES
        self.airflow_values: dict[str, Any] | None = (
            json.loads(values.read_text()) if values.is_file() else None
        )
        """The Airflow chart's values schema, or None where it is not vendored."""

    def values_errors(self, values: Any) -> list[str]:
        """What is wrong with the Airflow chart's values by its ``values.schema.json`` (in the
        schema's own JSON Schema draft): ``path.to.field: message`` per error; nothing where
        the schema is not vendored."""
        from jsonschema import validators  # type: ignore[import-untyped]

        if self.airflow_values is None:
            return []
        validator = validators.validator_for(self.airflow_values)(self.airflow_values)
        found = sorted(validator.iter_errors(values), key=lambda e: list(map(str, e.absolute_path)))
        return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found]

    def errors(self, doc: Any) -> list[str]:
        """What is wrong with one manifest: ``path.to.field: message`` per error."""
        from jsonschema import Draft202012Validator

        if not isinstance(doc, dict):
            return [f"(document): {doc!r} is not a Kubernetes object"]
        key = (str(doc.get("apiVersion")), str(doc.get("kind")))
        if key not in self.by_kind:
            return [f"(document): no vendored schema for {key}; known: {sorted(self.by_kind)}"]
        validator = Draft202012Validator(self.by_kind[key], registry=self.registry)
        found = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
        return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found]


def strict(schema: Any) -> Any:
    """A copy of an openAPIV3Schema in which objects with declared properties reject others
    (unless the schema keeps unknown fields)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {
        k: {name: strict(sub) for name, sub in v.items()} if k == "properties" else strict(v)
        for k, v in schema.items()
    }
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def airflow_config_errors(values: Mapping[str, Any]) -> list[str]:
    """Options of the chart values' ``config`` that the installed Airflow does not define
    (``airflow/config_templates/config.yml``). This checks option names only: it is not the
    chart's values schema."""
    import importlib.util

    spec = importlib.util.find_spec("airflow")
    if spec is None or spec.origin is None:
        from pipelines.errors import MissingExtraError

        raise MissingExtraError("airflow")
    known = yaml.safe_load((Path(spec.origin).parent / "config_templates/config.yml").read_text())
    errors = []
    for section, options in (values.get("config") or {}).items():
        if section not in known:
            errors.append(f"config.{section}: not a section of Airflow's configuration")
            continue
        for option in options or {}:
            if option not in known[section]["options"]:
                errors.append(f"config.{section}.{option}: not an option of [{section}]")
    return errors


def manifest_errors(files: Mapping[str, str], schemas: Schemas) -> list[str]:
    """Every problem of the rendered files: ``file: kind name: field: message``."""
    errors = []
    for name, text in files.items():
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            errors.append(f"{name}: not valid YAML: {exc}".replace("\n", " "))
            continue
        if name == "airflow-values.yaml":
            errors += [f"{name}: {e}" for e in airflow_config_errors(docs[0] or {})]
            errors += [f"{name}: {e}" for e in schemas.values_errors(docs[0] or {})]
            continue
        for doc in docs:
            meta = doc.get("metadata") or {} if isinstance(doc, dict) else {}
            label = (
                f"{name}: {doc.get('kind') if isinstance(doc, dict) else '?'} {meta.get('name')}"
            )
            errors += [f"{label}: {e}" for e in schemas.errors(doc)]
    return errors


def deploy_render(
    out: Annotated[Path, typer.Argument(help="Folder the manifests are written to.")],
    settings: Annotated[
        Path | None, typer.Option(help="Deployment settings YAML (keys: see docs/deploy.md).")
    ] = None,
    logs_url: Annotated[
        str | None, typer.Option(help="s3://bucket/prefix of the remote task logs.")
    ] = None,
    image: Annotated[str | None, typer.Option(help="Image repository.")] = None,
    tag: Annotated[str | None, typer.Option(help="Image tag (CPU build).")] = None,
    gpu_workers: Annotated[int | None, typer.Option(help="GPU Dask workers (pool slots).")] = None,
    configs: Annotated[
        Path | None, typer.Option(help="Folder of province configs: one scheduled DAG each.")
    ] = None,
    infra: Annotated[
        Path, typer.Option(help="The checkout's infra/k8s (templates and schemas).")
    ] = INFRA_K8S,
) -> None:
    """Render the Kubernetes manifests of a deployment, validate them against the vendored
    schemas and write them to OUT (docs/deploy.md)."""
    overrides = {"logs_url": logs_url, "image": image, "tag": tag, "gpu_workers": gpu_workers}
    if settings is not None:
        resolved = DeploySettings.load(settings, **overrides)
    else:
        resolved = DeploySettings.from_mapping(
            {k: v for k, v in overrides.items() if v is not None}
        )
    files = render(resolved, configs, infra)
    errors = manifest_errors(files, Schemas(infra / "schemas"))
    if errors:
        raise BadInputError(
            "manifests", sorted(files), "manifests valid against the schemas", "; ".join(errors)
        )
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(out / name)
