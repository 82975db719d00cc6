"""Tests of deemd.download, the download/unpack scripts and workflow/rules/download.smk.

Downloads go to a real HTTP server on 127.0.0.1 (a ThreadingHTTPServer in a thread) that
supports Range requests and can drop or stall the connection mid-body.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import re
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import download_archive
import unpack_images
import unpack_metadata
from deemd import download as dl

REPO = Path(__file__).resolve().parents[1]
KiB = 1024


def payload(n: int = 300 * KiB, seed: int = 7) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    block = seed.to_bytes(8, "little")
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- server


@dataclass
class ServerState:
    files: dict = field(default_factory=dict)  # "/name" -> bytes
    drops: int = 0  # this many next bodies are cut in half and the socket closed
    stalls: int = 0  # this many next bodies stall after half (client must time out)
    stall_s: float = 2.0
    ignore_range: bool = False
    headers: dict = field(default_factory=dict)  # extra response headers
    requests: list = field(default_factory=list)  # (path, Range header or None)
    stalling: int = 0  # responses now held open mid-body
    during_stall: list = field(default_factory=list)  # per request: did it arrive while one was held?
    bytes_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ranges(self):
        return [r for _, r in self.requests if r]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        st: ServerState = self.server.state
        rng = self.headers.get("Range")
        with st.lock:
            st.requests.append((self.path, rng))
            st.during_stall.append(st.stalling > 0)
        data = st.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, status = 0, 200
        if rng and not st.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))  # the full length, always
        self.send_header("Accept-Ranges", "bytes")
        for key, value in st.headers.items():
            self.send_header(key, value)
        self.end_headers()
        with st.lock:
            drop, stall = st.drops > 0, st.drops <= 0 and st.stalls > 0
            st.drops -= drop
            st.stalls -= stall
        if drop or stall:
            half = body[: len(body) // 2]
            self.wfile.write(half)
            self.wfile.flush()
            st.bytes_sent += len(half)
            if stall:
                with st.lock:
                    st.stalling += 1
                time.sleep(st.stall_s)
                with st.lock:
                    st.stalling -= 1
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)
        st.bytes_sent += len(body)


class Server:
    def __init__(self):
        self.state = ServerState()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, name: str, data: bytes) -> str:
        self.state.files[f"/{name}"] = data
        return f"{self.base_url}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


FAST = dict(chunk_size=16 * KiB, backoff=0.0, timeout=5.0)


# --------------------------------------------------------------------------- download


def test_resumes_after_dropped_connections(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    server.state.drops = 2
    lines = []
    dest = tmp_path / "archive.zip"

    out = dl.download(
        url,
        dest,
        md5=md5(data),
        sha256=sha256(data),
        progress=lines.append,
        progress_interval=0.0,
        **FAST,
    )

    assert out == dest and dest.read_bytes() == data
    assert not (tmp_path / "archive.zip.part").exists()
    # 1st request: full body, cut at half; then two Range requests continue from there.
    assert [r for _, r in server.state.requests] == [
        None,
        f"bytes={len(data) // 2}-",
        f"bytes={len(data) // 2 + (len(data) - len(data) // 2) // 2}-",
    ]
    assert server.state.bytes_sent == len(data)  # nothing was transferred twice
    assert lines and lines[-1].done == len(data) and lines[-1].total == len(data)
    text = str(lines[-1])
    assert "100.0 %" in text and "MB/s" in text and "archive.zip" in text


def test_checksum_mismatch_names_file_and_keeps_nothing_complete(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    dest = tmp_path / "archive.zip"
    wrong = "0" * 32

    with pytest.raises(dl.ChecksumMismatchError) as err:
        dl.download(url, dest, md5=wrong, **FAST)

    msg = str(err.value)
    assert str(dest) in msg and wrong in msg and md5(data) in msg
    assert not dest.exists() and not (tmp_path / "archive.zip.part").exists()
    assert (tmp_path / "archive.zip.bad").read_bytes() == data

    with pytest.raises(dl.ChecksumMismatchError):
        dl.download(url, dest, sha256="f" * 64, keep_bad=False, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.zip.bad"]  # old .bad only


def test_checksum_over_resumed_prefix(server, tmp_path):
    """A .part whose prefix is corrupt is caught although only the tail is downloaded."""
    data = payload()
    url = server.add("archive.zip", data)
    dest = tmp_path / "archive.zip"
    (tmp_path / "archive.zip.part").write_bytes(b"x" * 1000)
    with pytest.raises(dl.ChecksumMismatchError, match="md5"):
        dl.download(url, dest, md5=md5(data), **FAST)
    assert server.state.ranges() == ["bytes=1000-"]
    assert not dest.exists()


def test_server_ignoring_range_still_gives_correct_file(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    server.state.ignore_range = True
    server.state.drops = 1
    dest = tmp_path / "archive.zip"

    dl.download(url, dest, md5=md5(data), **FAST)

    assert dest.read_bytes() == data
    assert server.state.ranges() == [f"bytes={len(data) // 2}-"]  # asked, got 200: restart


def test_resumes_part_left_by_earlier_run(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    dest = tmp_path / "archive.zip"
    (tmp_path / "archive.zip.part").write_bytes(data[:1000])

    dl.download(url, dest, sha256=sha256(data), **FAST)

    assert dest.read_bytes() == data
    assert [r for _, r in server.state.requests] == ["bytes=1000-"]
    assert server.state.bytes_sent == len(data) - 1000


def test_complete_part_answered_416_is_accepted(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    dest = tmp_path / "archive.zip"
    (tmp_path / "archive.zip.part").write_bytes(data)

    dl.download(url, dest, md5=md5(data), **FAST)

    assert dest.read_bytes() == data
    assert server.state.ranges() == [f"bytes={len(data)}-"] and server.state.bytes_sent == 0


def test_expected_size_mismatch_fails_before_transfer(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    dest = tmp_path / "archive.zip"
    with pytest.raises(dl.SizeMismatchError) as err:
        dl.download(url, dest, expected_size=len(data) + 1, **FAST)
    assert str(len(data) + 1) in str(err.value) and str(len(data)) in str(err.value)
    assert not dest.exists() and not (tmp_path / "archive.zip.part").exists()  # nothing stored


def test_gives_up_after_retries_keeping_part_then_resumes(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    dest = tmp_path / "archive.zip"
    part = tmp_path / "archive.zip.part"
    # Every body is cut in half: attempts make progress (the failure count restarts)
    # until 1 byte is left, which never comes; then 3 retries without progress.
    server.state.drops = 10**6
    sleeps = []
    with pytest.raises(dl.DownloadError, match="giving up after 3 retries.*run again to resume"):
        dl.download(url, dest, retries=3, sleep=sleeps.append, **{**FAST, "backoff": 0.5})
    assert not dest.exists() and part.read_bytes() == data[:-1]
    assert sleeps[-2:] == [1.0, 2.0] and set(sleeps[:-2]) == {0.5}

    server.state.drops = 0
    n_before = len(server.state.requests)
    dl.download(url, dest, md5=md5(data), **FAST)
    assert dest.read_bytes() == data and not part.exists()
    assert [r for _, r in server.state.requests[n_before:]] == [f"bytes={len(data) - 1}-"]


def test_backoff_grows_without_progress(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    with pytest.raises(dl.DownloadError, match="giving up after 4 retries"):
        dl.download(
            f"http://127.0.0.1:{port}/x",
            tmp_path / "x",
            retries=4,
            sleep=sleeps.append,
            backoff=1.0,
            max_backoff=5.0,
        )
    assert sleeps == [1.0, 2.0, 4.0, 5.0]
    assert not list(tmp_path.iterdir())


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="404"):
        dl.download(f"{server.base_url}/missing.zip", tmp_path / "missing.zip", **FAST)
    assert len(server.state.requests) == 1
    assert not list(tmp_path.iterdir())


def test_stalled_connection_times_out_and_resumes(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    server.state.stalls = 1
    server.state.stall_s = 3.0
    dest = tmp_path / "archive.zip"
    dl.download(url, dest, md5=md5(data), **{**FAST, "timeout": 0.3})
    assert dest.read_bytes() == data
    # Resumed from the last whole chunk written before the stall (a read that times out
    # returns nothing of what it had buffered).
    (resumed,) = server.state.ranges()
    offset = int(resumed.removeprefix("bytes=").rstrip("-"))
    assert 0 < offset <= len(data) // 2 and offset % FAST["chunk_size"] == 0
    # The client gave up on the stalled response (read timeout 0.3 s) and resumed while the
    # server still held it open (3 s), rather than waiting for the server to close it.
    assert server.state.during_stall == [False, True]


def test_server_announced_md5_is_checked(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    good = base64.b64encode(hashlib.md5(data).digest()).decode()
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()

    server.state.headers = {"x-goog-hash": f"crc32c=AAAAAA==,md5={bad}"}
    with pytest.raises(dl.ChecksumMismatchError, match="announced by the server"):
        dl.download(url, tmp_path / "a.zip", **FAST)
    assert not (tmp_path / "a.zip").exists()

    server.state.headers = {"x-goog-hash": f"crc32c=AAAAAA==,md5={good}"}
    server.state.drops = 1  # md5 learnt on the first response, kept over the resume
    dl.download(url, tmp_path / "b.zip", **FAST)
    assert (tmp_path / "b.zip").read_bytes() == data


def test_existing_verified_dest_is_not_downloaded_again(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    dest = tmp_path / "archive.zip"
    dest.write_bytes(data)
    dl.download(url, dest, md5=md5(data), **FAST)
    assert server.state.requests == []


def test_file_url(tmp_path):
    data = payload(5000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dest = dl.download(src.as_uri(), tmp_path / "out" / "dst.bin", md5=md5(data), **FAST)
    assert dest.read_bytes() == data
    with pytest.raises(dl.DownloadError):
        dl.download((tmp_path / "nope").as_uri(), tmp_path / "nope.bin", **FAST)


def test_parse_content_range_and_progress_text():
    assert dl.parse_content_range("bytes 100-199/1000") == (100, 199, 1000)
    assert dl.parse_content_range("bytes 0-9/*") == (0, 9, None)
    assert dl.parse_content_range("bytes */1000") == (None, None, 1000)
    assert dl.parse_content_range("items 1-2/3") is None
    text = str(dl.Progress("RxRx19a-images.zip", 222_500_000_000, 445_000_000_000, 50e6, 100))
    assert text.startswith(
        "RxRx19a-images.zip: 222.50 GB / 445.00 GB (50.0 %), 50.00 MB/s, ETA 1:14:10"
    )
    with pytest.raises(ValueError):
        dl.normalise_checksums(md5="abc")


def test_download_script_logs_progress(server, tmp_path):
    data = payload()
    url = server.add("archive.zip", data)
    server.state.drops = 1
    log = tmp_path / "logs" / "download.log"
    download_archive.main(
        url,
        str(tmp_path / "a.zip"),
        log=str(log),
        md5=md5(data),
        chunk_mib=1 / 64,
        progress_interval_s=0.0,
    )
    text = log.read_text()
    assert (tmp_path / "a.zip").read_bytes() == data
    assert "MB/s" in text and "100.0 %" in text and "resuming at" in text and "retry 1/20" in text


# --------------------------------------------------------------------------- unpacking


def make_images_zip(path: Path) -> dict[str, bytes]:
    """A small RxRx19a-like images archive; returns member -> content."""
    members = {}
    for exp, plates in (("HRCE-1", (1, 2)), ("HRCE-2", (1,)), ("HRCE-10", (1,)), ("VERO-1", (1,))):
        for plate in plates:
            for well in ("A01", "B02"):
                for site in (1, 2):
                    for ch in (1, 2):
                        name = f"RxRx19a/images/{exp}/Plate{plate}/{well}_s{site}_w{ch}.png"
                        members[name] = f"{name}\n".encode() * (site + ch)
    members["RxRx19a/metadata.csv"] = b"site_id,experiment\nHRCE-1_1_A01_1,HRCE-1\n"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("RxRx19a/", b"")
        zf.writestr("RxRx19a/images/", b"")
        for name, content in members.items():
            zf.writestr(name, content)
    return members


def selected(members: dict, exp: str) -> dict:
    return {n.split("RxRx19a/", 1)[1]: c for n, c in members.items() if f"/images/{exp}/" in n}


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_image_member_path():
    assert dl.image_member_path("RxRx19a/images/HRCE-1/Plate1/A01_s1_w1.png", "HRCE-1") == (
        "images/HRCE-1/Plate1/A01_s1_w1.png"
    )
    assert dl.image_member_path("images/HRCE-1/Plate1/A01_s1_w1.png", "HRCE-1") is not None
    assert dl.image_member_path("RxRx19a/images/HRCE-10/Plate1/A01_s1_w1.png", "HRCE-1") is None
    assert dl.image_member_path("RxRx19a/otherimages/HRCE-1/x.png", "HRCE-1") is None
    assert dl.image_member_path("RxRx19a/images/HRCE-1/", "HRCE-1") is None
    with pytest.raises(dl.UnpackError):
        dl.image_member_path("RxRx19a/images/HRCE-1/../../../etc/x", "HRCE-1")


def test_unpack_selects_one_experiment(tmp_path):
    members = make_images_zip(tmp_path / "images.zip")
    root = tmp_path / "res"
    result = dl.unpack_experiment(tmp_path / "images.zip", root, "HRCE-1")
    want = selected(members, "HRCE-1")
    assert tree(root) == want
    assert "images/HRCE-1/Plate2/B02_s2_w1.png" in want and len(want) == 16
    assert (result.files, result.extracted, result.skipped, result.plates) == (16, 16, 0, 2)
    with pytest.raises(dl.UnpackError, match="HRCE-3"):
        dl.unpack_experiment(tmp_path / "images.zip", root, "HRCE-3")


def test_unpack_resumes_and_skips_present_files(tmp_path, monkeypatch):
    members = make_images_zip(tmp_path / "images.zip")
    root = tmp_path / "res"
    want = selected(members, "HRCE-1")
    names = sorted(want)

    # Kill the first run at the 6th member, mid-copy, without any cleanup (as SIGKILL would).
    real_copy = dl.unpack.shutil.copyfileobj
    calls = []

    def flaky_copy(src, dst, length=0):
        calls.append(dst.name)
        if len(calls) == 6:
            dst.write(b"half")
            raise KeyboardInterrupt
        return real_copy(src, dst, length)

    monkeypatch.setattr(dl.unpack.shutil, "copyfileobj", flaky_copy)
    monkeypatch.setattr(dl.unpack.Path, "unlink", lambda self, missing_ok=False: None)
    with pytest.raises(KeyboardInterrupt):
        dl.unpack_experiment(tmp_path / "images.zip", root, "HRCE-1")
    monkeypatch.undo()
    done = tree(root)
    stale = Path(calls[-1])
    assert stale.name.startswith(".") and stale.name.endswith(".part") and stale.exists()
    del done[stale.relative_to(root).as_posix()]
    assert len(done) == 5 and all(want[n] == c for n, c in done.items())  # no partial file
    assert stale.with_name(stale.name[1 : -len(".part")]).exists() is False

    # A truncated file (wrong size) is redone; files present with the right size are not.
    (root / names[-1]).parent.mkdir(parents=True, exist_ok=True)
    (root / names[-1]).write_bytes(b"trunc")
    result = dl.unpack_experiment(tmp_path / "images.zip", root, "HRCE-1")
    assert (result.files, result.extracted, result.skipped) == (16, 11, 5)
    assert tree(root) == want

    assert not stale.exists()  # the stray temporary was overwritten and renamed
    again = dl.unpack_experiment(tmp_path / "images.zip", root, "HRCE-1")
    assert (again.extracted, again.skipped) == (0, 16)


def test_unpack_images_script_writes_flag_last(tmp_path, monkeypatch):
    members = make_images_zip(tmp_path / "images.zip")
    root, flag = tmp_path / "res", tmp_path / "res" / "unpacked" / "HRCE-2.done"
    unpack_images.main(
        str(tmp_path / "images.zip"), str(root), str(flag), "HRCE-2", log=str(tmp_path / "u.log")
    )
    assert "files: 8\n" in flag.read_text() and "experiment: HRCE-2\n" in flag.read_text()
    assert tree(root / "images") == {
        k.removeprefix("images/"): v for k, v in selected(members, "HRCE-2").items()
    }
    assert not list(flag.parent.glob(".*"))  # no temporary left beside the flag
    assert "8/8 files (100.0 %)" in (tmp_path / "u.log").read_text()

    # A failing unpack writes no flag.
    flag2 = root / "unpacked" / "VERO-1.done"
    monkeypatch.setattr(
        unpack_images,
        "unpack_experiment",
        lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")),
    )
    with pytest.raises(OSError):
        unpack_images.main(str(tmp_path / "images.zip"), str(root), str(flag2), "VERO-1")
    assert not flag2.exists()


def test_unpack_whole_archive_strips_top_folder(tmp_path):
    with zipfile.ZipFile(tmp_path / "emb.zip", "w") as zf:
        zf.writestr("RxRx19a/embeddings.csv", "a,b\n1,2\n")
        zf.writestr("RxRx19a/sub/readme.txt", "hi")
    flag = tmp_path / "emb" / "embeddings.done"
    unpack_images.main(str(tmp_path / "emb.zip"), str(tmp_path / "emb"), str(flag), None)
    assert tree(tmp_path / "emb") == {
        "embeddings.csv": b"a,b\n1,2\n",
        "sub/readme.txt": b"hi",
        "embeddings.done": flag.read_bytes(),
    }
    assert "files: 2\n" in flag.read_text()


def test_unpack_metadata(tmp_path):
    make_images_zip(tmp_path / "meta.zip")
    out = tmp_path / "res" / "metadata.csv"
    unpack_metadata.main(
        str(tmp_path / "meta.zip"), "metadata.csv", str(out), log=str(tmp_path / "m.log")
    )
    assert out.read_bytes() == b"site_id,experiment\nHRCE-1_1_A01_1,HRCE-1\n"
    assert "1 rows" in (tmp_path / "m.log").read_text()
    with pytest.raises(dl.UnpackError, match="no member 'other.csv'"):
        unpack_metadata.main(str(tmp_path / "meta.zip"), "other.csv", str(tmp_path / "o.csv"))
    assert not (tmp_path / "o.csv").exists()


# --------------------------------------------------------------------------- workflow


TEST_SNAKEFILE = """
DATASET = config["dataset"]["name"]
RESOURCES = f"resources/{{DATASET}}"
LOGS = f"logs/{{DATASET}}"
BENCH = f"benchmarks/results/{{DATASET}}"


include: "{rules}"
"""

TEST_CONFIG = """
dataset: {{name: rxtest}}
download:
  base_url: {base_url}/rxrx/RxRx19a
  archives:
    metadata: {{file: RxRx19a-metadata.zip, size: {meta_size}, md5: {meta_md5}, sha256: null}}
    images: {{file: RxRx19a-images.zip, size: null, md5: null, sha256: {images_sha256}}}
    embeddings: {{file: RxRx19a-DL-embeddings.zip, size: null, md5: null, sha256: null}}
  metadata_member: metadata.csv
  experiments: [HRCE-1, VERO-1]
  retries: 3
  timeout_s: 5
  chunk_mib: 0.01
"""


def test_rules_download_and_unpack_end_to_end(server, tmp_path):
    members = make_images_zip(tmp_path / "images.zip")
    images = (tmp_path / "images.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "meta.zip", "w") as zf:
        zf.writestr("RxRx19a/metadata.csv", members["RxRx19a/metadata.csv"])
    meta = (tmp_path / "meta.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "emb.zip", "w") as zf:
        zf.writestr("RxRx19a/embeddings.csv", "site_id,f0\nx,0.5\n")
    server.add("rxrx/RxRx19a/RxRx19a-metadata.zip", meta)
    server.add("rxrx/RxRx19a/RxRx19a-images.zip", images)
    server.add("rxrx/RxRx19a/RxRx19a-DL-embeddings.zip", (tmp_path / "emb.zip").read_bytes())
    server.state.drops = 1  # the first transfer is cut: the rule must resume it

    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(
        TEST_SNAKEFILE.format(rules=REPO / "workflow" / "rules" / "download.smk")
    )
    (work / "config.yaml").write_text(
        TEST_CONFIG.format(
            base_url=server.base_url,
            meta_size=len(meta),
            meta_md5=md5(meta),
            images_sha256=sha256(images),
        )
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        "1",
        "-s",
        str(work / "Snakefile"),
        "--configfile",
        str(work / "config.yaml"),
        "--directory",
        str(work),
    ]

    run = subprocess.run(cmd + ["unpack_metadata"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    res = work / "resources" / "rxtest"
    assert (res / "metadata.csv").read_bytes() == members["RxRx19a/metadata.csv"]
    assert (res / "downloads" / "RxRx19a-metadata.zip").read_bytes() == meta
    assert server.state.ranges() == [f"bytes={len(meta) // 2}-"]
    log = (work / "logs" / "rxtest" / "download_archive" / "RxRx19a-metadata.zip.log").read_text()
    assert "resuming at" in log and "md5" in log and "verified" in log
    assert (work / "benchmarks" / "results" / "rxtest" / "unpack_metadata.tsv").exists()

    run = subprocess.run(cmd + ["download_all"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (res / "downloads" / "RxRx19a-images.zip").read_bytes() == images
    for exp in ("HRCE-1", "VERO-1"):
        assert (
            f"files: {len(selected(members, exp))}\n"
            in (res / "unpacked" / f"{exp}.done").read_text()
        )
    assert tree(res / "images") == {
        k.removeprefix("images/"): v
        for exp in ("HRCE-1", "VERO-1")
        for k, v in selected(members, exp).items()
    }
    assert (res / "embeddings" / "embeddings.csv").read_text() == "site_id,f0\nx,0.5\n"
    assert not list(res.rglob("*.part"))

    dry = subprocess.run(
        cmd + ["download_all", "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
