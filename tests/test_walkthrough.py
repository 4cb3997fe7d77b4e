"""The README's own-media walkthrough, run exactly as written on media made by ffmpeg.

The commands are read from the README block marked ``walkthrough``, so the README cannot
drift from what works: clips and tracks → features → ``deccm data assemble`` → train →
``deccm recommend``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from media import GENRES, N_TRACKS, make_user_media

ROOT = Path(__file__).resolve().parent.parent


def readme_walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- walkthrough[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert m, "README.md lost its walkthrough block"
    return [line.split("  #")[0].strip() for line in m.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    make_user_media(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "DECCM_HOME"}  # the README's default state dir: ./.deccm
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `deccm` as the venv installs it
    env["NUMBA_CACHE_DIR"] = os.environ.get("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    out = ""
    for cmd in readme_walkthrough():
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stderr[-3000:]}"
        out = r.stdout
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["rank", "score", "genre", "title"]
    assert len(lines) == 1 + 5
    titles = {f"Tune {i}" for i in range(N_TRACKS)}
    for rank, line in enumerate(lines[1:], 1):
        cells = line.split()
        assert cells[0] == str(rank) and cells[2] in GENRES and f"{cells[3]} {cells[4]}" in titles
    data = tmp_path / ".deccm/data/mine"
    assert (data / "dataset.json").is_file() and len(list((data / "media/tracks").iterdir())) == N_TRACKS

    # the same suggestions as JSON, and a file that is not a video gets the decoder's reason, not a traceback
    run = ".deccm/runs/student-plain-fixed-s1234"
    r = subprocess.run(["deccm", "recommend", run, "clips/clip-000.mp4", "--k", "5", "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["suggestions"]
    assert [s["title"] for s in got] == [" ".join(line.split()[3:5]) for line in lines[1:]]
    assert all(Path(s["audio"]).is_file() and s["genre"] in GENRES for s in got)
    (tmp_path / "notes.mp4").write_text("hello")
    r = subprocess.run(["deccm", "recommend", run, "notes.mp4"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "notes.mp4: not a media file" in r.stderr and "Traceback" not in r.stderr
