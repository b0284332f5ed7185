"""ray_cluster.yaml is a real cluster launcher config: Ray's own validator accepts it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


def _load() -> dict[str, Any]:
    data = yaml.safe_load(CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def test_ray_validator_accepts_the_config() -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(_load())


def test_node_types_carry_placement_resources_and_install_the_package() -> None:
    config = _load()
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any("opsmantik_partition" in t["resources"] for t in types.values())
    assert any("opsmantik_uploader" in t["resources"] for t in types.values())
    assert any("pip install" in cmd and "opsmantik-stream" in cmd for cmd in config["setup_commands"])
    assert any("ray start --head" in cmd for cmd in config["head_start_ray_commands"])
    assert any("--address=" in cmd for cmd in config["worker_start_ray_commands"])


def test_every_node_starts_ray_with_token_authentication_from_a_secret() -> None:
    """Issue 14: a multi-node cluster must not accept whoever reaches its GCS port. Each
    `ray start` (head and workers) runs with RAY_AUTH_MODE=token and reads the token from a
    file that the initialization fetched from the secret store; the file holds no token."""
    config = _load()
    starts = [
        cmd
        for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for cmd in config[key]
        if "ray start" in cmd
    ]
    assert len(starts) == 2
    for cmd in starts:
        assert "RAY_AUTH_MODE=token" in cmd, cmd
        assert "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in cmd, cmd
        assert "test -s ~/.ray/auth_token" in cmd, cmd  # no token file: the node does not start
    fetch = [cmd for cmd in config["initialization_commands"] if "auth_token" in cmd]
    assert len(fetch) == 1
    assert "secretsmanager get-secret-value" in fetch[0] and "umask 077" in fetch[0]
    # the token itself is never in the file (only the variable naming its path)
    text = CONFIG.read_text()
    assert "RAY_AUTH_TOKEN=" not in text
    for node_type in config["available_node_types"].values():
        assert node_type["node_config"]["IamInstanceProfile"] == {"Name": "opsmantik-ray-node"}


def test_validator_rejects_a_broken_config() -> None:
    # The check above could not pass by accident: the same validator refuses a bad file.
    from ray.autoscaler._private.util import validate_config

    broken = copy.deepcopy(_load())
    broken["available_node_types"]["head"]["unknown_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(broken)
    missing_head = copy.deepcopy(_load())
    missing_head["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(missing_head)
