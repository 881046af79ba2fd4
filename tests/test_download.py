"""Download, verify and unpack against a loopback HTTP server, down to the Snakemake rule."""

from __future__ import annotations

import hashlib
import http.server
import io
import logging
import os
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml
from test_refer import write_refer_dataset
from test_referit import write_referit_dataset

from builders import one_line_error
from rmi.data.download import download_file, fetch_entry, hash_prefix_from_name, unpack_archive
from rmi.data.refer import load_refer
from rmi.data.referit import load_referit
from rmi.errors import ChecksumError

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 1000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def zip_tree(src: Path, archive: Path) -> bytes:
    """Zip every file under ``src`` with paths relative to it; return the archive's bytes."""
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    return archive.read_bytes()


def tar_tree(src: Path, archive: Path, mode: str = "w:gz") -> bytes:
    with tarfile.open(archive, mode) as tf:
        for p in sorted(src.iterdir()):
            tf.add(p, p.name)
    return archive.read_bytes()


def tar_members(archive: Path, members: list[tarfile.TarInfo]) -> bytes:
    with tarfile.open(archive, "w:gz") as tf:
        for m in members:
            data = b"evil" if m.isfile() else None
            if data is not None:
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
    return archive.read_bytes()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def served(http_server):
    """``PAYLOAD`` served as ``/blob.bin``; yields ``(root, base_url)``."""
    root, base = http_server
    (root / "blob.bin").write_bytes(PAYLOAD)
    return root, base


# --- download_file ----------------------------------------------------------------------------


def test_download_file_verifies_each_digest(served, tmp_path):
    _, base = served
    url = f"{base}/blob.bin"
    out = tmp_path / "dl"
    assert download_file(url, out / "a", sha256=sha256(PAYLOAD)).read_bytes() == PAYLOAD
    assert download_file(url, out / "b", md5=md5(PAYLOAD).upper()).read_bytes() == PAYLOAD
    assert download_file(url, out / "c", sha256_prefix=sha256(PAYLOAD)[:8]).read_bytes() == PAYLOAD
    assert download_file((served[0] / "blob.bin").as_uri(), out / "d", sha256=sha256(PAYLOAD)).read_bytes() == PAYLOAD
    assert leftovers(out) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("algorithm", ["sha256", "md5", "sha256_prefix"])
def test_checksum_mismatch_names_url_and_digests_and_leaves_nothing(served, tmp_path, algorithm):
    _, base = served
    url = f"{base}/blob.bin"
    actual = {"sha256": sha256(PAYLOAD), "md5": md5(PAYLOAD), "sha256_prefix": sha256(PAYLOAD)[:8]}[algorithm]
    wrong = "0" * len(actual)
    msg = one_line_error(download_file, url, tmp_path / "dl" / "blob.bin", error=ChecksumError, **{algorithm: wrong})
    assert msg == f"{url}: {algorithm.replace('_', ' ')} mismatch: expected {wrong}, got {actual}"
    assert leftovers(tmp_path / "dl") == []


def test_http_error_and_unreachable_host(http_server, tmp_path):
    _, base = http_server
    url = f"{base}/missing.zip"
    assert (
        one_line_error(download_file, url, tmp_path / "dl" / "x") == f"{url}: download failed: HTTP 404 File not found"
    )
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    assert one_line_error(download_file, url, tmp_path / "dl" / "x").startswith(f"{url}: download failed:")
    assert leftovers(tmp_path / "dl") == []


class _ShortBody(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 10, closes: a connection cut mid-download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)

    def log_message(self, *args):
        pass


def test_truncated_body_is_an_error(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _ShortBody)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x.bin"
        assert (
            one_line_error(download_file, url, tmp_path / "dl" / "x")
            == f"{url}: download truncated: got 10 of 1000 bytes"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert leftovers(tmp_path / "dl") == []


def test_no_checksum_warns_with_the_actual_digest(served, tmp_path, caplog):
    _, base = served
    with caplog.at_level(logging.WARNING):
        download_file(f"{base}/blob.bin", tmp_path / "x")
    assert f"UNVERIFIED download {base}/blob.bin" in caplog.text and sha256(PAYLOAD) in caplog.text


def test_hash_prefix_from_torch_hub_names():
    assert hash_prefix_from_name("https://download.pytorch.org/models/resnet101-63fe2227.pth") == "63fe2227"
    assert (
        hash_prefix_from_name("https://download.pytorch.org/models/deeplabv3_resnet101_coco-586e9e4e.pth") == "586e9e4e"
    )
    assert hash_prefix_from_name("https://example.org/weights.pth") is None


# --- fetch_entry: real layouts ----------------------------------------------------------------


def test_refer_zip_is_verified_unpacked_and_loadable(http_server, tmp_path):
    root, base = http_server
    write_refer_dataset(tmp_path / "stage", name="refcoco")
    (tmp_path / "stage" / "images").rename(tmp_path / "images")
    data = zip_tree(tmp_path / "stage", root / "refcoco.zip")
    out = tmp_path / "data" / "refcoco"
    spec = {"files": [{"url": f"{base}/refcoco.zip", "md5": md5(data), "unpack": True}]}
    assert fetch_entry(spec, out) == out
    assert leftovers(out) == ["refcoco"]  # the archive itself is gone
    assert leftovers(out / "refcoco") == ["instances.json", "refs(unc).p"]
    assert leftovers(tmp_path / "data") == ["refcoco"]  # no temporary directory left
    (tmp_path / "plain").mkdir()
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode  # not the private mode of mkdtemp
    recs = load_refer(out / "refcoco", "unc", tmp_path / "images", "train")
    assert [r.sent_id for r in recs] == [1001, 1002, 1021]


@pytest.mark.parametrize("name, mode", [("referitdata.tar.gz", "w:gz"), ("referitdata.tar", "w")])
def test_referit_tarball_and_split_files(http_server, tmp_path, name, mode):
    root, base = http_server
    stage = tmp_path / "stage"
    write_referit_dataset(stage)
    split_json = (stage / "referit_query_test.json").read_bytes()
    (stage / "referit_query_test.json").rename(root / "referit_query_test.json")
    data = tar_tree(stage, root / name, mode)
    images = fetch_entry(
        {"files": [{"url": f"{base}/{name}", "sha256": sha256(data), "unpack": True}]},
        tmp_path / "data" / "referit_images",
    )
    splits = fetch_entry(
        {"files": [{"url": f"{base}/referit_query_test.json", "sha256": sha256(split_json), "unpack": False}]},
        tmp_path / "data" / "referit_splits",
    )
    assert leftovers(images) == ["images", "mask"] and leftovers(splits) == ["referit_query_test.json"]
    assert leftovers(tmp_path / "data") == ["referit_images", "referit_splits"]
    recs = load_referit(splits / "referit_query_test.json", images / "images", images / "mask", "test")
    assert recs[0].mask.decode().sum() == 5 * 30 and recs[0].image_path.is_file()


def test_any_failure_removes_the_whole_entry(served, tmp_path):
    root, base = served
    (root / "b.json").write_text("{}")
    spec = {
        "files": [
            {"url": f"{base}/blob.bin", "sha256": sha256(PAYLOAD), "unpack": False},
            {"url": f"{base}/b.json", "sha256": "f" * 64, "unpack": False},
        ]
    }
    msg = one_line_error(fetch_entry, spec, tmp_path / "data" / "entry", error=ChecksumError)
    assert f"{base}/b.json: sha256 mismatch: expected {'f' * 64}, got {sha256(b'{}')}" == msg
    assert leftovers(tmp_path / "data") == []
    (root / "c.bin").write_bytes(PAYLOAD)
    spec["files"][1] = {"url": f"{base}/c.bin", "sha256": None, "unpack": True}
    assert "neither a zip nor a tar archive" in one_line_error(fetch_entry, spec, tmp_path / "data" / "entry")
    assert leftovers(tmp_path / "data") == []


def _zip_escape(archive: Path) -> bytes:
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "evil")
    return archive.read_bytes()


def _tar_escape(archive: Path) -> bytes:
    return tar_members(archive, [tarfile.TarInfo("ok.txt"), tarfile.TarInfo("sub/../../evil.txt")])


def _tar_absolute(archive: Path) -> bytes:
    return tar_members(archive, [tarfile.TarInfo("/tmp/evil.txt")])


def _tar_symlink_out(archive: Path) -> bytes:
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return tar_members(archive, [link])


@pytest.mark.parametrize(
    "make, problem",
    [
        (_zip_escape, "refusing archive member '../evil.txt'"),
        (_tar_escape, "refusing archive member 'sub/../../evil.txt'"),
        (_tar_absolute, "refusing archive member '/tmp/evil.txt'"),
        (_tar_symlink_out, "cannot unpack archive (AbsoluteLinkError"),
    ],
)
def test_archives_escaping_the_directory_are_refused(http_server, tmp_path, make, problem):
    root, base = http_server
    name = "bad.zip" if make is _zip_escape else "bad.tar.gz"
    data = make(root / name)
    out = tmp_path / "deep" / "data" / "entry"
    msg = one_line_error(
        fetch_entry, {"files": [{"url": f"{base}/{name}", "sha256": sha256(data), "unpack": True}]}, out
    )
    assert problem in msg and f"{name}: " in msg
    assert leftovers(out.parent) == []
    assert not list(tmp_path.rglob("evil.txt"))


def test_unpack_archive_rejects_a_corrupt_zip(tmp_path):
    archive = tmp_path / "a.zip"
    zip_tree(_stage_one_file(tmp_path), archive)
    archive.write_bytes(archive.read_bytes()[:-30])
    assert one_line_error(unpack_archive, archive, tmp_path / "x").startswith(f"{archive}: ")


def _stage_one_file(tmp_path: Path) -> Path:
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "f.txt").write_text("x" * 100)
    return stage


def test_existing_entry_is_not_overwritten(served, tmp_path):
    _, base = served
    spec = {"files": [{"url": f"{base}/blob.bin", "sha256": sha256(PAYLOAD), "unpack": False}]}
    out = tmp_path / "data" / "entry"
    out.mkdir(parents=True)
    fetch_entry(spec, out)  # an empty directory (as a scheduler may create) is fine
    assert one_line_error(fetch_entry, spec, out) == f"{out}: already exists; remove it to download again"
    assert leftovers(out) == ["blob.bin"]


# --- the Snakemake rule -----------------------------------------------------------------------


def _snakemake(work: Path, config: Path, target: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--cores",
        "1",
        f"--configfile={config}",
        target,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_snakemake_download_rule(http_server, tmp_path):
    root, base = http_server
    stage = tmp_path / "stage"
    write_refer_dataset(stage, name="refcoco+")
    data = zip_tree(stage, root / "refcoco+.zip")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["downloads"] = {
        "refcoco+": {"files": [{"url": f"{base}/refcoco+.zip", "sha256": sha256(data), "unpack": True}]},
        "broken": {"files": [{"url": f"{base}/refcoco+.zip", "sha256": "0" * 64, "unpack": True}]},
    }
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    work = tmp_path / "work"
    work.mkdir()
    # The rules call scripts by a path relative to the working directory.
    (work / "workflow_scripts").symlink_to(REPO / "workflow_scripts")

    run = _snakemake(work, config_file, "data/refcoco+")
    assert run.returncode == 0, run.stderr[-3000:]
    assert leftovers(work / "data" / "refcoco+") == [".snakemake_timestamp", "images", "refcoco+"]
    assert leftovers(work / "data" / "refcoco+" / "refcoco+") == ["instances.json", "refs(unc).p"]
    logs = work / config["results_dir"] / "logs" / "download"  # logs live with the config's results
    assert "verified refcoco+.zip" in (logs / "refcoco+.log").read_text()

    run = _snakemake(work, config_file, "data/broken")
    assert run.returncode != 0
    log = (logs / "broken.log").read_text()
    assert (
        log.strip().splitlines()[-1]
        == f"error: {base}/refcoco+.zip: sha256 mismatch: expected {'0' * 64}, got {sha256(data)}"
    )
    assert leftovers(work / "data") == ["refcoco+"]
