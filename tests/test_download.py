import hashlib
import http.server
import threading
import zipfile
from functools import partial

import pytest

from embed.datasets.download import DownloadError, download_circor, fetch, safe_extract, verify_checksums


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with Range support, so resuming can be tested."""

    def log_message(self, *args):
        pass

    def send_head(self):
        rng = self.headers.get("Range")
        if not rng:
            return super().send_head()
        path = self.translate_path(self.path)
        data = open(path, "rb").read()
        start = int(rng.split("=")[1].split("-")[0])
        if start >= len(data):
            self.send_error(416)
            return None
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        import io
        return io.BytesIO(data[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def release_zip(path, files):
    sums = "".join(f"{hashlib.sha256(v).hexdigest()} {k}\n" for k, v in files.items())
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in files.items():
            zf.writestr(f"circor-1.0.3/{k}", v)
        zf.writestr("circor-1.0.3/SHA256SUMS.txt", sums)


def test_download_resume_unpack_verify(server, tmp_path):
    root, url = server
    files = {"training_data.csv": b"Patient ID\n1\n", "training_data/1.txt": b"1 0 4000\n" * 500}
    release_zip(root / "c.zip", files)
    blob = (root / "c.zip").read_bytes()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "c.zip.part").write_bytes(blob[:100])  # an interrupted earlier download
    data = download_circor(dest, f"{url}/c.zip")
    assert (dest / "c.zip").read_bytes() == blob
    assert (data / "training_data.csv").read_bytes() == files["training_data.csv"]
    assert verify_checksums(data) == ([], 3 - 1)


def test_checksum_mismatch_is_reported(server, tmp_path):
    root, url = server
    release_zip(root / "c.zip", {"training_data.csv": b"x"})
    data = download_circor(tmp_path / "d", f"{url}/c.zip")
    (data / "training_data.csv").write_bytes(b"tampered")
    problems, n = verify_checksums(data)
    assert n == 1 and "checksum mismatch" in problems[0]


def test_zip_slip_is_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escaped.txt", b"x")
    with pytest.raises(DownloadError, match="outside"):
        safe_extract(evil, tmp_path / "out")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_missing_file_on_server(server, tmp_path):
    _, url = server
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{url}/nope.zip", tmp_path / "nope.zip")
