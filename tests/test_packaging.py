"""An installed package (not a source checkout) must find its templates; the scripts that
install it say what they are doing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO

PROBE = """
import datetime as dt, digest, digest.render as r
from digest.index import build_digest
from digest.models import Listing, Subscriber, Topic
now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
sub = Subscriber(id="a", name="A", email="a@example.org", timezone="UTC", send_at=dt.time(7),
                 max_items=3, lookback_days=7, topics=(Topic("T", ("pruning",)),))
d = build_digest(sub, [Listing(id="x", title="Pruning", abstract="pruning")],
                 now.date(), now)
out = r.render(d, r.Links("mailto:x@example.org"), r.environment())
print(digest.__file__)
print(r.default_template_dir())
print("Hi A," in out.text and "<!doctype html>" in out.html.lower())
"""


def test_wheel_ships_the_templates_and_the_installed_package_uses_them(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("digest-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "digest/templates/digest.mjml.j2" in names
    assert "digest/templates/digest.txt.j2" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    module, templates, ok = done.stdout.split()
    assert module.startswith(str(site))
    assert templates == str(site / "digest" / "templates")
    assert ok == "True"


# Stands in for python3 and the venv's python: `-m venv DIR` makes DIR/bin/python (this same
# script), anything else (the version check, pip) succeeds at once.
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
fi
exit 0
"""


def test_the_venv_script_says_it_is_installing_and_only_then(tmp_path: Path) -> None:
    # ./scripts/demo's first run installs quietly for a minute or two: it printed nothing.
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "_venv.sh", tmp_path / "scripts" / "_venv.sh")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)

    def source() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", "source scripts/_venv.sh"], cwd=tmp_path,
                              env={**os.environ, "PYTHON": str(fake)}, capture_output=True,
                              text=True, timeout=60, check=True)

    first = source()
    assert first.stderr.startswith("digest: installing digest and its dependencies into .venv")
    assert first.stdout == ""
    assert source().stderr == ""  # installed: nothing to say
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    assert "pyproject.toml changed" in source().stderr
