"""Every setting is documented: each field of Settings has a description, docs/configuration.md
holds the table generated from them (regenerate with `make docs`), and the docs name no
variable that does not exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from opsmantik_stream.config import ENV_PREFIX, ConfigError, Settings, load_settings
from opsmantik_stream.docgen import BEGIN, END, settings_markdown, splice, undocumented_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_every_setting_has_a_description() -> None:
    missing = [ENV_PREFIX + name.upper() for name in undocumented_settings()]
    assert not missing, f"add doc('...') to these fields in opsmantik_stream/config.py: {missing}"


def test_configuration_md_holds_the_generated_table_of_every_setting() -> None:
    current = CONFIGURATION.read_text()
    assert current == splice(current, settings_markdown()), "docs/configuration.md is stale: run `make docs`"
    table = current.split(BEGIN, 1)[1].split(END, 1)[0]
    listed = re.findall(r"^\| `(OPSMANTIK_[A-Z0-9_]+)` \|", table, re.MULTILINE)
    assert listed == [ENV_PREFIX + f.name.upper() for f in msgspec.structs.fields(Settings)]


def test_the_regeneration_command_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text(f"# Configuration\n\n{BEGIN}\n| old table |\n{END}\n")
    command = [sys.executable, "-m", "opsmantik_stream.docgen", "--path", str(stale)]
    checked = subprocess.run([*command, "--check"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1 and "run `make docs`" in checked.stderr
    assert subprocess.run(command, capture_output=True, text=True, timeout=60).returncode == 0
    assert "`OPSMANTIK_PUBLIC_URL`" in stale.read_text() and "old table" not in stale.read_text()
    assert subprocess.run([*command, "--check"], capture_output=True, text=True, timeout=60).returncode == 0


def test_docs_name_only_real_settings() -> None:
    settings = {ENV_PREFIX + f.name.upper() for f in msgspec.structs.fields(Settings)}
    # not settings: the secret inputs of `opsmantik site credentials set` and the test suite's own
    others = re.compile(r"OPSMANTIK_(CRED_[A-Z0-9_]*|TEST_[A-Z0-9_]+)$")
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in set(re.findall(r"OPSMANTIK_[A-Z0-9_]+", doc.read_text())):
            assert name in settings or others.match(name), f"{doc.name} names {name}, which is not a setting"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("https://track.example.com", True), ("http://127.0.0.1:8000", True), ("track.example.com", False)],
)
def test_public_url_must_be_an_http_url(value: str, accepted: bool) -> None:
    if accepted:
        assert load_settings(environ={"OPSMANTIK_PUBLIC_URL": value}).public_url == value
    else:
        with pytest.raises(ConfigError, match=r"^OPSMANTIK_PUBLIC_URL: "):
            load_settings(environ={"OPSMANTIK_PUBLIC_URL": value})
