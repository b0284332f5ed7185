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
