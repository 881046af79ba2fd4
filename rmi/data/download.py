"""Download, verify and unpack the raw datasets (``config["downloads"]``) and pretrained weights.

Nothing half-done is ever left where a rerun would trust it: a file is streamed to a temporary
name beside its destination and hashed on the way, and only renamed once its digest matches;
an entry is assembled in a temporary directory beside ``data/<name>`` and renamed into place
once every file is verified and unpacked. Any error removes the temporary file or directory.

Unverified files: a file configured with no checksum (``null``) is downloaded with a loud
warning that prints its actual sha256, so users can pin it. Refusing would make entries whose
upstream digest is unknown (the ReferIt tarball, see ``config/paper.yaml``) impossible to fetch
at all; the warning keeps the gap visible in the rule's log instead.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from rmi.errors import ChecksumError, InputError
from rmi.fileio import atomic_path, current_umask

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_HUB_HASH = re.compile(r"-([a-f0-9]{6,64})\.")


def hash_prefix_from_name(url: str) -> str | None:
    """The sha256 prefix torch.hub-style file names carry (``resnet101-63fe2227.pth`` -> ``63fe2227``)."""
    match = _HUB_HASH.search(PurePosixPath(urllib.parse.urlsplit(url).path).name)
    return match.group(1) if match else None


def _open(url: str, timeout: float):
    """Open ``url`` (http, https or file); network and HTTP failures become ``InputError``."""
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise InputError(url, f"download failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise InputError(url, f"download failed: {getattr(err, 'reason', err)}") from err


def _stream(url: str, dest: Path, timeout: float) -> dict[str, str]:
    """Copy ``url`` into ``dest``; return its ``{"sha256": ..., "md5": ...}`` hex digests."""
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    with _open(url, timeout) as response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        expected_size = int(length) if length and length.isdigit() else None
        size = 0
        with tqdm(total=expected_size, unit="B", unit_scale=True, desc=dest.name, mininterval=5.0, disable=None) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise InputError(url, f"download interrupted after {size} bytes ({err})") from err
                if not chunk:
                    break
                out.write(chunk)
                for h in digests.values():
                    h.update(chunk)
                size += len(chunk)
                bar.update(len(chunk))
    if expected_size is not None and size != expected_size:
        raise InputError(url, f"download truncated: got {size} of {expected_size} bytes")
    return {name: h.hexdigest() for name, h in digests.items()}


def _verify(url: str, actual: dict[str, str], sha256: str | None, md5: str | None, sha256_prefix: str | None) -> None:
    """Raise ``ChecksumError`` unless every configured digest matches; warn when none is."""
    checks = [("sha256", sha256, actual["sha256"]), ("md5", md5, actual["md5"])]
    if sha256_prefix:
        checks.append(("sha256 prefix", sha256_prefix, actual["sha256"][: len(sha256_prefix)]))
    configured = [(name, exp.lower(), got) for name, exp, got in checks if exp]
    for name, expected, got in configured:
        if expected != got:
            raise ChecksumError(url, name, expected, got)
    if not configured:
        log.warning(
            "UNVERIFIED download %s: no checksum configured; its sha256 is %s (pin it in the config)",
            url,
            actual["sha256"],
        )


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    sha256_prefix: str | None = None,
    timeout: float = 60,
) -> Path:
    """Download ``url`` (http, https or file) to ``dest`` and return ``dest``.

    Streams to a temporary file beside ``dest``, hashing while it goes, checks every given
    digest (full ``sha256``, ``md5``, and/or the leading hex digits ``sha256_prefix``), then
    renames it onto ``dest``. A mismatch raises ``ChecksumError`` (URL, algorithm, expected and
    actual digest); an HTTP or network error or a body shorter than its Content-Length raises
    ``InputError`` naming the URL. On any error neither the temporary file nor ``dest`` exists
    afterwards. With no digest given, the file is kept with a warning that prints its sha256.
    """
    dest = Path(dest)
    log.info("downloading %s -> %s", url, dest)
    with atomic_path(dest) as tmp:
        actual = _stream(url, tmp, timeout)
        _verify(url, actual, sha256, md5, sha256_prefix)
    log.info("verified %s (sha256 %s)", dest.name, actual["sha256"])
    return dest


def _check_member(archive: Path, root: Path, name: str) -> None:
    """Refuse an archive member whose name is absolute or escapes ``root`` (``..``)."""
    target = (root / name).resolve()
    if PurePosixPath(name).is_absolute() or (target != root and root not in target.parents):
        raise InputError(
            archive, f"refusing archive member {name!r}: it would be extracted outside the target directory"
        )


def unpack_archive(archive: Path, root: Path) -> None:
    """Extract a ``.zip`` or ``.tar`` (optionally gz/bz2/xz compressed) archive into ``root``.

    The format is detected from the content, not the name. Members that would land outside
    ``root`` (absolute paths, ``..``) are refused before anything is written; tar archives are
    extracted with the ``"data"`` filter as well (no links out of ``root``, no device files).
    A corrupt archive is an ``InputError`` naming it.
    """
    archive, root = Path(archive), Path(root).resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _check_member(archive, root, name)
                zf.extractall(root)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _check_member(archive, root, member.name)
                tf.extractall(root, filter="data")
        else:
            raise InputError(archive, "unpack is set but the file is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise InputError(archive, f"cannot unpack archive ({type(err).__name__}: {err})") from err


def _file_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name or name in (".", ".."):
        raise InputError(url, "URL does not end in a file name")
    return name


def fetch_entry(spec: dict, out_dir: str | Path) -> Path:
    """Build ``out_dir`` from one ``config["downloads"]`` entry; return ``out_dir``.

    ``spec`` is ``{"files": [{"url", "sha256" | "md5" (hex or null), "unpack": bool}, ...]}``.
    Every file is downloaded into a temporary directory ``out_dir.parent/.<name>.tmp-XXXX``,
    verified (see ``download_file``), and, with ``unpack``, extracted there and deleted; a file
    without ``unpack`` keeps its URL's file name. The directory is renamed to ``out_dir`` only
    when everything succeeded; on any error (or interrupt) it is removed. An existing non-empty
    ``out_dir`` is an error (delete it to download again).
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise InputError(out_dir, "already exists; remove it to download again")
        out_dir.rmdir()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the data is shared like any output
    try:
        for entry in spec["files"]:
            url = entry["url"]
            dest = tmp / _file_name(url)
            if dest.exists():
                raise InputError(
                    url, f"{dest.name} already exists in this download entry (two URLs with one file name?)"
                )
            download_file(url, dest, sha256=entry.get("sha256"), md5=entry.get("md5"))
            if entry.get("unpack"):
                log.info("unpacking %s", dest.name)
                unpack_archive(dest, tmp)
                dest.unlink()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s ready: %s", out_dir, ", ".join(sorted(p.name for p in out_dir.iterdir())))
    return out_dir
