"""Shared fixtures: a loopback HTTP server over a temp directory, seeded RNGs."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serve ``tmp_path / "www"`` on 127.0.0.1 (ephemeral port); yields ``(root_dir, base_url)``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"
#: where the tiny config's rules write (relative to the working directory)
TINY_RESULTS = yaml.safe_load(TINY_CONFIG.read_text())["results_dir"]
# Rules that declare resources: gpu=1 (rules/*.smk): the profiles give them the GPU partition
GPU_RULES = {"train", "train_lockstep", "predict", "extract_features", "pretrain_backbone"}


def snakemake(
    workdir: Path,
    *args: str,
    configfile: Path | list[Path] = TINY_CONFIG,
    cores: int = 2,
    check: bool = True,
    snakefile: Path = REPO / "Snakefile",
):
    """Run the repository's workflow (or another ``snakefile``) in ``workdir`` (a CLI call); returns the
    CompletedProcess.

    ``configfile``: one file, or a config and its overlays (merged in order, as ``--configfile a b``).
    """
    files = [configfile] if isinstance(configfile, Path) else configfile
    cmd = [
        str(SNAKEMAKE),
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        "--cores",
        str(cores),
        *args,
        "--configfile",
        *map(str, files),
    ]
    env = {**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the "Job stats" table of a ``snakemake -n`` run ({} if nothing to do)."""
    counts, in_table = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
        elif in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="session")
def completed_tiny_run(tmp_path_factory) -> Path:
    """A working directory where the whole default DAG has run on ``tests/data/tiny_config.yaml``."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir)
    return workdir
