"""An installed package (not a source checkout) must find its templates."""

from __future__ import annotations

import os
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
