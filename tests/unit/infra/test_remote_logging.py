"""The rendered chart values' remote logging, loaded by the installed Airflow: the S3 task-log
handler must import (it comes with the Amazon provider of the ``airflow`` extra), or every Airflow
component of the image fails at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.unit.infra.test_manifests import rendered

PROBE = """
from airflow.logging_config import configure_logging
configure_logging()
from airflow.config_templates import airflow_local_settings as settings
print(type(settings.REMOTE_TASK_LOG).__name__)
"""


def test_remote_logging_of_the_rendered_values_loads_in_airflow(tmp_path: Path) -> None:
    values = yaml.safe_load(rendered()["airflow-values.yaml"])
    logging = values["config"]["logging"]
    assert str(logging["remote_base_log_folder"]).startswith("s3://")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["AIRFLOW_HOME"] = str(tmp_path)
    env.update({f"AIRFLOW__LOGGING__{key.upper()}": str(v) for key, v in logging.items()})
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip().splitlines()[-1] == "S3RemoteLogIO"
