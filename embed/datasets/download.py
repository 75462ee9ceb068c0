"""Fetch and verify the official CirCor release.

`download_circor` resumes a partial download with an HTTP Range request, checks the archive,
refuses zip entries that would land outside the destination (zip-slip), unpacks, and checks
every file against the release's SHA256SUMS.txt.
"""
from __future__ import annotations

import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..checksum import file_sha256

DEFAULT_URL = ("https://physionet.org/static/published-projects/circor-heart-sound/"
               "the-circor-digiscope-phonocardiogram-dataset-1.0.3.zip")


class DownloadError(RuntimeError):
    pass


def fetch(url: str, target: Path, chunk: int = 1 << 16, timeout: float = 60.0) -> Path:
    """Download `url` to `target`, resuming from `target.part` when it exists."""
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # range past the end: the part file is already whole
            part.rename(target)
            return target
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except OSError as err:
        raise DownloadError(f"{url}: {err}") from err
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            have = 0  # server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=target.name, file=sys.stderr) as bar:
            while block := response.read(chunk):
                fh.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; rerun to resume")
    part.rename(target)
    return target


def safe_extract(archive: Path, dest: Path) -> list[Path]:
    """Unpack a zip, refusing absolute paths and entries that escape `dest`."""
    dest = dest.resolve()
    out = []
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{archive}: corrupt member {bad}")
            for info in zf.infolist():
                target = (dest / info.filename).resolve()
                if info.filename.startswith("/") or not target.is_relative_to(dest):
                    raise DownloadError(f"{archive}: entry {info.filename!r} would be written outside {dest}")
            for info in zf.infolist():
                zf.extract(info, dest)
                out.append(dest / info.filename)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{archive}: not a valid zip ({err}); delete it and download again") from err
    return out


def find_dataset_root(folder: Path) -> Path:
    hits = sorted(folder.rglob("training_data.csv"), key=lambda p: len(p.parts))
    if not hits:
        raise DownloadError(f"{folder}: no training_data.csv after unpacking")
    return hits[0].parent


def verify_checksums(data_dir: str | Path) -> tuple[list[str], int]:
    """Check files against SHA256SUMS.txt; returns (problems, files listed). No list: ([], 0)."""
    root = Path(data_dir)
    sums = root / "SHA256SUMS.txt"
    if not sums.exists():
        return [], 0
    problems, n = [], 0
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        n += 1
        path = root / name
        if not path.exists():
            problems.append(f"{path}: missing")
        elif file_sha256(path) != digest:
            problems.append(f"{path}: checksum mismatch")
    return problems, n


def download_circor(dest: str | Path, url: str = DEFAULT_URL, expected_sha256: str | None = None) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / Path(url.split("?")[0]).name
    if not archive.exists():
        fetch(url, archive)
    if expected_sha256 and file_sha256(archive) != expected_sha256:
        raise DownloadError(f"{archive}: sha256 differs from the expected value")
    unpack = dest / archive.stem
    if unpack.exists():
        shutil.rmtree(unpack)
    safe_extract(archive, unpack)
    root = find_dataset_root(unpack)
    problems, n = verify_checksums(root)
    if problems:
        raise DownloadError(f"{root}: {len(problems)} of {n} files fail SHA256SUMS.txt, e.g. {problems[0]}")
    return root
