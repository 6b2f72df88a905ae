"""The documentation site builds strictly and its generated references are complete.

Every Python block of the pages runs under Sybil (see the root conftest.py); here:
``mkdocs build --strict`` (a broken link, a missing API reference or any warning fails),
and the event table the build generates from the code (docs/_hooks/generate.py) names
every type and field. tests/test_configuration.py checks the option and CLI tables.
"""

import os
import pathlib
import subprocess
import sys

from coda_ws import docgen
from coda_ws.events import EVENT_CLASSES, BaseEvent

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    """The whole site, API reference included, with warnings as errors."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    # Members inherited from EventMethods are rendered on the server's page.
    assert "broadcast_system_info" in api and "wait_for_clients" in api
    for page in ("configuration", "cli", "emitting", "observability"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_the_event_reference_names_every_type_and_field():
    reference = docgen.event_reference()
    for event_type, cls in EVENT_CLASSES.items():
        type_name = event_type.value
        assert f"`{type_name}`" in reference, type_name
        for field in cls.__dataclass_fields__:
            if field not in BaseEvent.__dataclass_fields__:  # the envelope, documented once
                assert f"`{field}`" in reference, f"{type_name}.{field}"
