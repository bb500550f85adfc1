"""Data on first use (spark_jax.setting.download) against a local HTTP server: the internet is never touched.

The server listens on 127.0.0.1 at a free port for this module only and is shut down in teardown.
It serves the real IDX files under /good/<dataset>/<file> and bad variants: /corrupt/ (one byte
flipped), /short/ (half the body, honest length), /cut/ (full Content-Length, half sent), /404/,
/500/ and /loop/ (a redirect to itself). "Server down" is a port nothing listens on.
"""

import errno
import hashlib
import http.server
import os
import pathlib
import socket
import threading
import time

import pytest

from spark_jax.setting import data, data_checksums, download

FASHION = list(download.KNOWN_FILES["fashion_mnist"])


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # pylint: disable=invalid-name
        self.server.requests.append(self.path)
        mode, _, rest = self.path.strip("/").partition("/")
        if mode in ("404", "500"):
            self.send_error(int(mode))
            return
        if mode == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        dataset, _, fname = rest.partition("/")
        path = self.server.dirs[dataset] / fname if dataset in self.server.dirs else None
        if path is None or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        length = len(body)
        if mode == "corrupt":
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        elif mode == "short":
            body = body[: len(body) // 2]
            length = len(body)
        elif mode == "cut":
            body = body[: len(body) // 2]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that stops reading (a rejected body, a full disk) resets the connection: expected


@pytest.fixture(scope="module")
def server(real_data_dir):
    """(base address, list of requested paths) of the local server; stopped when the module ends."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.dirs, httpd.requests = {n: d for n in download.KNOWN_FILES if (d := real_dir(real_data_dir, n))}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def requests(server):
    server[1].clear()
    return server[1]


@pytest.fixture(autouse=True)
def downloads_on(monkeypatch, tmp_path):
    """Downloads enabled (conftest turns them off), an empty per-test cache, no other data source."""
    for var in (download.NO_DOWNLOAD_ENV, download.REQUIRE_ENV, download.URL_ENV, data.ENV_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(data.DEBIAN_DIRS, "fashion_mnist", str(tmp_path / "no-debian"))

    def no_tfds(name):
        raise data.DataError(f"no prepared local TFDS dataset {name!r}")

    monkeypatch.setattr(data, "load_from_tfds", no_tfds)


def real_dir(real_data_dir, name: str):
    """The directory holding the real files of `name` (D/fashion_mnist, D/fashion-mnist, ...), or None."""
    files = data.find_idx_files(real_data_dir, name)
    return files["train_images"].parent if files and files["train_images"].name.endswith(".gz") else None


def dead_url() -> str:
    """A 127.0.0.1 address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_known_files_are_the_published_ones(real_data_dir):
    checked = []
    for name, files in download.KNOWN_FILES.items():
        if real_dir(real_data_dir, name) is None and name != "fashion_mnist":
            continue  # e.g. only Debian's Fashion-MNIST package
        checked.append(name)
        for fname, (size, sha256) in files.items():
            raw = (real_dir(real_data_dir, name) / fname).read_bytes()
            assert len(raw) == size
            assert hashlib.md5(raw).hexdigest() == data_checksums.PUBLISHED_MD5[name][fname], (name, fname)
            assert hashlib.sha256(raw).hexdigest() == sha256, (name, fname)
    print(f"checked against the real files: {', '.join(checked)}")


def test_first_use_downloads_checks_and_caches(server, requests, tmp_path, real_data_dir, capsys):
    base = f"{server[0]}/good/fashion_mnist"
    ds = data.load_dataset("fashion_mnist", download=True, base_url=base)
    cache = tmp_path / "cache" / "spark_jax" / "fashion_mnist"
    assert ds.source == str(cache) and ds.train_images.shape == (60000, 28, 28)
    assert sorted(requests) == sorted(f"/good/fashion_mnist/{f}" for f in FASHION)
    assert leftovers(cache) == sorted(FASHION)  # no temp files
    for f in FASHION:
        assert (cache / f).read_bytes() == (real_dir(real_data_dir, "fashion_mnist") / f).read_bytes()
    out = capsys.readouterr().out
    assert f"downloading {base}/train-images-idx3-ubyte.gz (26.4 MB) -> {cache}" in out
    assert f"fashion_mnist: the four IDX files are in {cache} (sizes and sha256 checked)" in out
    # Present now: read from the cache, no request.
    assert data.load_dataset("fashion_mnist", download=True, base_url=base).source == str(cache)
    assert len(requests) == 4


def test_files_present_make_no_request(server, requests, monkeypatch, real_data_dir, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, real_data_dir)
    monkeypatch.setenv(download.URL_ENV, f"{server[0]}/good/fashion_mnist")
    for name in ("fashion_mnist", "mnist"):
        if real_dir(real_data_dir, name) is not None:
            data.load_dataset(name, download=True)
            assert download.fetch(name, real_dir(real_data_dir, name)) == real_dir(real_data_dir, name)
    assert requests == []


@pytest.mark.parametrize("env", [{download.NO_DOWNLOAD_ENV: "1"}, {download.REQUIRE_ENV: "1"}])
def test_downloads_off_by_environment(env, server, requests, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(data.DataError, match="could not find dataset 'fashion_mnist'"):
        data.load_dataset("fashion_mnist", download=True, base_url=f"{server[0]}/good/fashion_mnist")
    assert requests == [] and not download.enabled()


@pytest.mark.parametrize("mode,message", [
    ("corrupt", "sha256 .* is not the published"), ("short", "truncated: 13210940 of 26421880 bytes"),
    ("cut", "truncated: 13210940 of 26421880"), ("404", "HTTP 404"), ("500", "HTTP 500"),
    ("loop", "HTTP 302 The HTTP server returned a redirect error that would lead to an infinite loop")])
def test_bad_downloads_are_rejected_and_not_kept(mode, message, server, requests, tmp_path):
    dest = tmp_path / "d"
    with pytest.raises(download.DownloadError, match=message) as err:
        download.fetch("fashion_mnist", dest, base_url=f"{server[0]}/{mode}/fashion_mnist", log=lambda s: None)
    line = str(err.value)
    assert "\n" not in line and "could not download fashion_mnist train-images-idx3-ubyte.gz" in line
    assert "nothing partial was kept" in line and "apt-get install dataset-fashion-mnist" in line
    assert leftovers(dest) == []


def test_server_down_is_one_line_within_seconds(tmp_path):
    url = dead_url()
    start = time.monotonic()
    with pytest.raises(data.DataError) as err:
        data.load_dataset("fashion_mnist", data_dir=tmp_path / "d", download=True, base_url=url)
    assert time.monotonic() - start < 15
    line = str(err.value)
    assert "\n" not in line and "Connection refused" in line
    for fix in ("apt-get install dataset-fashion-mnist", "--data_dir=DIR", url):
        assert fix in line
    assert leftovers(tmp_path / "d" / "fashion_mnist") == []


def test_an_unreachable_mirror_is_asked_once_then_the_next(server, requests, monkeypatch, tmp_path):
    dead = dead_url()
    monkeypatch.setitem(download.MIRRORS, "fashion_mnist", (dead, f"{server[0]}/good/fashion_mnist/"))
    tried = []
    download.fetch("fashion_mnist", tmp_path / "d", log=tried.append)
    assert [t.split()[1].startswith(dead) for t in tried[:-1]] == [True] + [False] * 4
    assert leftovers(tmp_path / "d") == sorted(FASHION)


def test_unusable_cache_directories(server, requests, tmp_path, monkeypatch):
    base = f"{server[0]}/good/fashion_mnist"
    (tmp_path / "file").write_text("x")
    with pytest.raises(download.DownloadError, match="cannot create the download directory .*file/fm"):
        download.fetch("fashion_mnist", tmp_path / "file" / "fm", base_url=base, log=lambda s: None)
    read_only = tmp_path / "ro"
    read_only.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes through mode bits: fail as a read-only mount would
        monkeypatch.setattr(download.os, "access", lambda *a: False)
    with pytest.raises(download.DownloadError, match=f"the download directory {read_only} is not writable"):
        download.fetch("fashion_mnist", read_only, base_url=base, log=lambda s: None)
    assert requests == [] and leftovers(read_only) == []


def test_disk_full_during_download_leaves_nothing(server, tmp_path, monkeypatch):
    def full(f, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "_write", full)
    dest = tmp_path / "d"
    with pytest.raises(download.DownloadError) as err:
        download.fetch("fashion_mnist", dest, base_url=f"{server[0]}/good/fashion_mnist", log=lambda s: None)
    assert f"cannot write {dest / FASHION[0]} (OSError: [Errno 28] No space left on device)" in str(err.value)
    assert "\n" not in str(err.value) and leftovers(dest) == []


def test_an_existing_copy_is_never_overwritten(server, requests, tmp_path, real_data_dir):
    dest = tmp_path / "d"
    dest.mkdir()
    good = dest / "train-labels-idx1-ubyte.gz"
    good.write_bytes((real_dir(real_data_dir, "fashion_mnist") / good.name).read_bytes())
    before = good.stat()
    with pytest.raises(download.DownloadError, match="sha256"):  # the others fail: corrupt
        download.fetch("fashion_mnist", dest, base_url=f"{server[0]}/corrupt/fashion_mnist", log=lambda s: None)
    assert good.stat().st_ino == before.st_ino and good.stat().st_mtime_ns == before.st_mtime_ns
    assert f"/corrupt/fashion_mnist/{good.name}" not in requests and leftovers(dest) == [good.name]
    bad = dest / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not the file")
    requests.clear()
    with pytest.raises(download.DownloadError, match=f"{bad} exists but is not the published file .* left as it is"):
        download.fetch("fashion_mnist", dest, base_url=f"{server[0]}/good/fashion_mnist", log=lambda s: None)
    assert bad.read_bytes() == b"not the file" and requests == []


def test_a_run_config_downloads_into_the_cache_or_not(server, requests, tmp_path, capsys):
    """run_data.load (what a run calls) passes config.data.download and .base_url to the loader."""
    from experiments.configs import tiny  # pylint: disable=g-import-not-at-top
    from spark_jax.runner import run_data  # pylint: disable=g-import-not-at-top

    config = tiny.get_config()
    config.data.download = False
    config.data.base_url = f"{server[0]}/good/fashion_mnist"
    with pytest.raises(data.DataError, match="could not find dataset 'fashion_mnist'"):
        run_data.load(config)
    assert requests == []
    config.data.download = True
    ds, part = run_data.load(config)[:2]
    cache = tmp_path / "cache" / "spark_jax" / "fashion_mnist"
    assert ds.source == str(cache) and part.num_nodes == 8 and len(requests) == 4
    assert f"fashion_mnist: the four IDX files are in {cache}" in capsys.readouterr().out
