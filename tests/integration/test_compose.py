"""compose.yaml is valid against the compose specification and wires the ledger as intended.

No Docker engine is needed: the file is checked against the compose-spec schema that
check-jsonschema ships, so the check runs offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
LEDGER_SERVICES = ("ledger",)


def _check_jsonschema() -> str:
    beside_python = Path(sys.executable).with_name("check-jsonschema")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("check-jsonschema")
    if found is None:
        pytest.fail("check-jsonschema is not installed; it comes with the project's test extra")
    return found


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    # Any download attempt goes to a closed local port and fails, so a pass proves
    # the built-in schema was used without the network.
    env = dict(os.environ)
    for name in ("NO_PROXY", "no_proxy"):
        env.pop(name, None)
    dead_proxy = "http://127.0.0.1:9"
    env.update(HTTP_PROXY=dead_proxy, HTTPS_PROXY=dead_proxy, http_proxy=dead_proxy, https_proxy=dead_proxy)
    return subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _load() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    # Compose accepts both a mapping and a list of KEY=VALUE strings.
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_compose_file_matches_the_compose_specification() -> None:
    result = _validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_validator_rejects_an_invalid_compose_file(tmp_path: Path) -> None:
    data = _load()
    data["services"]["ledger"]["depends_on"] = 5
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(data), encoding="utf-8")

    result = _validate(broken)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "depends_on" in result.stdout + result.stderr


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_ledger_is_built_from_this_repository(name: str) -> None:
    build = _load()["services"][name]["build"]
    assert (COMPOSE_FILE.parent / build["context"]).resolve() == ROOT
    image = build["dockerfile_inline"]
    assert "FROM python:3.11-slim" in image
    assert "COPY . /src" in image and "pip install ." in image
    assert 'ENTRYPOINT ["acb"]' in image


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_ledger_waits_for_healthy_broker_and_database_and_the_keys(name: str) -> None:
    services = _load()["services"]
    depends_on = services[name]["depends_on"]

    for needed in ("rabbitmq", "postgres"):
        assert depends_on[needed]["condition"] == "service_healthy"
        assert "healthcheck" in services[needed], f"{needed} never becomes healthy without a healthcheck"
    assert depends_on["init"]["condition"] == "service_completed_successfully"
    assert services["init"]["command"] == ["init"]
    # ... and for the broker's roles, which broker-setup makes once the broker answers.
    assert depends_on["broker-setup"]["condition"] == "service_completed_successfully"
    assert services["broker-setup"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_ledger_reaches_broker_and_a_store_of_its_own(name: str) -> None:
    services = _load()["services"]
    service = services[name]
    env = _environment(service)

    assert service["command"] == ["ledger", "run"]
    # No broker URL in the file: a replica reads its own role's URL from system/broker.json, which
    # broker-setup writes on the volume it shares with the replicas.
    assert not {"ACB_BROKER_URL", "ACB_REPLICA_BROKER_URL", "ACB_OPERATOR_BROKER_URL"} & set(env)
    # Replicas never share a store: each gets the database named after its replica id.
    assert env["ACB_STORE_URL"] == "postgresql+psycopg://postgres@postgres:5432/acb_{replica}"
    # ... but they share the system keys made once by `init`, and the broker roles' URLs.
    for other in (service, services["init"], services["broker-setup"]):
        assert "acb-home:/var/lib/acb" in other["volumes"]


def _broker_conf() -> dict[str, str]:
    data = _load()
    [mount] = data["services"]["rabbitmq"]["configs"]
    assert mount["target"].startswith("/etc/rabbitmq/conf.d/")  # read after the image's own defaults
    content = data["configs"][mount["source"]]["content"]
    return dict(line.split(" = ", 1) for line in content.splitlines() if line.strip() and not line.startswith("#"))


def test_the_broker_has_no_default_account_only_acb_administrator() -> None:
    assert "guest" not in COMPOSE_FILE.read_text(encoding="utf-8").lower()
    conf = _broker_conf()
    assert conf["default_user"] == "acb-admin"
    assert conf["default_pass"].startswith("${ACB_BROKER_ADMIN_PASSWORD:?")  # from the environment, never a default
    assert conf["default_user_tags.administrator"] == "true"


def test_the_broker_limits_message_size_as_the_set_up_does() -> None:
    from broker.admin import MAX_MESSAGE_SIZE

    assert int(_broker_conf()["max_message_size"]) == MAX_MESSAGE_SIZE


def test_broker_setup_makes_the_roles_as_the_administrator() -> None:
    service = _load()["services"]["broker-setup"]
    assert service["entrypoint"] == ["python", "-m", "broker.admin"]
    command = service["command"]
    assert command[0] == "broker-setup"
    assert command[command.index("--vhost") + 1] == "acb" and command[command.index("--prefix") + 1] == "acb"
    assert command[command.index("--amqp-url") + 1] == "amqp://rabbitmq:5672"
    admin = _environment(service)["ACB_BROKER_ADMIN_URL"]
    assert admin.startswith("http://acb-admin:${ACB_BROKER_ADMIN_PASSWORD:?") and admin.endswith("@rabbitmq:15672/")
    assert service["restart"] == "no"


@pytest.mark.parametrize("name", LEDGER_SERVICES)
def test_ledger_can_be_scaled(name: str) -> None:
    service = _load()["services"][name]

    # A fixed container name or host port would stop a second replica from starting.
    assert "container_name" not in service
    assert "ports" not in service
    assert service["deploy"]["replicas"] >= 2
