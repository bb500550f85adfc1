"""Fetches the four IDX files of a dataset on first use, checksummed (BUILD.md "Data").

`spark_jax.setting.data.load_dataset` calls `fetch` only when no source has the files
and downloading is enabled (`enabled`): `config.data.download` (default True)
and neither `$SPARK_JAX_NO_DOWNLOAD=1` nor `$SPARK_JAX_REQUIRE_DATA` (CI: the
data must already be there). Files present are never re-requested.

Each file is tried at every mirror in `MIRRORS` (or only at `base_url` /
`$SPARK_JAX_DATA_URL`), streamed into a temporary file beside its target,
checked against `KNOWN_FILES` (published size, and the sha256 of the files
whose md5 is the published one), then renamed into place: a partial, corrupt
or interrupted download never counts as present and never replaces an existing
file. A mirror that fails with a network error (refused, unreachable, timeout)
is not asked again, so an offline machine fails within ~2 x `TIMEOUT_S`
with one line (`DownloadError`) naming the three other ways to get the data.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from spark_jax.checks import env_switch
from spark_jax.setting.data import DataError, IDX_FILES
from spark_jax.setting import data_checksums
from spark_jax.setting.data_checksums import CANONICAL
from spark_jax.setting.comm import human_bytes

NO_DOWNLOAD_ENV = "SPARK_JAX_NO_DOWNLOAD"  # =1: never download
URL_ENV = "SPARK_JAX_DATA_URL"  # one base URL instead of the mirror list (tests, private mirrors)
REQUIRE_ENV = "SPARK_JAX_REQUIRE_DATA"  # CI: the data must be present, nothing is downloaded
TIMEOUT_S = 5.0  # per blocking socket operation (connect, each read)
CHUNK = 1 << 20

# Base URLs, tried in order; each + file name is the file.
MIRRORS = {
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
}
# dataset -> file -> (size in bytes, sha256) of the published `.gz` files (`data_checksums.CANONICAL`).
KNOWN_FILES = {name: {IDX_FILES[key] + ".gz": c.gz for key, c in files.items()}
               for name, files in CANONICAL.items()}
assert all(set(files) == {s + ".gz" for s in IDX_FILES.values()} for files in KNOWN_FILES.values())


class DownloadError(DataError):
    """A download that failed; one line naming the file, the cause and the other ways to get the data."""


def enabled(config_flag: bool = True) -> bool:
    """Whether to download: `config_flag` and neither $SPARK_JAX_NO_DOWNLOAD=1 nor $SPARK_JAX_REQUIRE_DATA."""
    return bool(config_flag) and not env_switch(NO_DOWNLOAD_ENV) and not os.environ.get(REQUIRE_ENV)


def cache_dir(name: str) -> pathlib.Path:
    """Where a download of `name` goes: $SPARK_JAX_DATA_DIR/<name>, else $XDG_CACHE_HOME (~/.cache)/spark_jax/<name>."""
    from spark_jax.setting.data import ENV_VAR  # pylint: disable=g-import-not-at-top

    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR]) / name
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "spark_jax" / name


def base_urls(name: str, base_url: str | None = None) -> tuple[str, ...]:
    """`base_url`, else $SPARK_JAX_DATA_URL, else the mirror list; each ending in '/'."""
    one = base_url or os.environ.get(URL_ENV)
    urls = (one,) if one else MIRRORS[name]
    return tuple(u if u.endswith("/") else u + "/" for u in urls)


def _fixes(name: str, urls) -> str:
    """The other ways to get the data, for the one-line error."""
    apt = "`apt-get install dataset-fashion-mnist`, or " if name == "fashion_mnist" else ""
    files = ", ".join(KNOWN_FILES[name])
    return (f"to fix: {apt}put the four files ({files}) in a directory and pass --data_dir=DIR "
            f"(or set $SPARK_JAX_DATA_DIR), or download them yourself from {' or '.join(urls)}")


def _digest_ok(path: pathlib.Path, size: int, sha256: str) -> bool:
    if path.stat().st_size != size:
        return False
    return data_checksums.sha256_file(path, CHUNK) == sha256


class _WriteError(Exception):
    """A local OSError (the cache directory: full, read-only, ...) while saving a download."""

    def __init__(self, error: OSError):
        super().__init__(str(error))
        self.error = error


def _local(fn, *args):
    """fn(*args), with an OSError turned into _WriteError (not a network failure)."""
    try:
        return fn(*args)
    except OSError as e:
        raise _WriteError(e) from e


def _write(f, block: bytes) -> None:
    f.write(block)


def _network_error(e: BaseException) -> bool:
    """Errors that say the host is unreachable (so the mirror is not asked again), not a bad file."""
    if isinstance(e, urllib.error.HTTPError):
        return False
    return isinstance(e, (urllib.error.URLError, OSError))


def _describe(e: BaseException) -> str:
    """One line: 'HTTP 404 Not Found', 'ConnectionRefusedError: [Errno 111] Connection refused', ..."""
    if isinstance(e, urllib.error.HTTPError):
        text = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, urllib.error.URLError):
        text = f"{type(e.reason).__name__}: {e.reason}" if isinstance(e.reason, BaseException) else str(e.reason)
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return " ".join(text.split())


def _resolve(url: str, timeout: float) -> None:
    """Resolves the URL's host within `timeout` (getaddrinfo ignores socket timeouts; some offline
    resolvers hang for long); URLError if it cannot."""
    parts = urllib.parse.urlsplit(url)
    result: dict = {}

    def lookup():
        try:
            socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        except OSError as e:
            result["error"] = e

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise urllib.error.URLError(TimeoutError(f"resolving {parts.hostname} took over {timeout:g} s"))
    if "error" in result:
        raise urllib.error.URLError(result["error"])


def _fetch_one(url: str, target: pathlib.Path, size: int, sha256: str, timeout: float) -> None:
    """Streams `url` into a temp file beside `target`, checks size + sha256, renames.

    ValueError: a bad body; _WriteError: a local OSError; anything else: the network.
    The temp file is removed whatever happens.
    """
    _resolve(url, timeout)
    fd, tmp = _local(tempfile.mkstemp, ".part", f".{target.name}.", target.parent)
    try:
        h, got = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                while block := resp.read(CHUNK):
                    got += len(block)
                    if got > size:
                        raise ValueError(f"body longer than the published {size} bytes")
                    h.update(block)
                    _local(_write, out, block)
            _local(out.flush)
            _local(os.fsync, out.fileno())
        if got != size:
            raise ValueError(f"truncated: {got} of {size} bytes")
        if h.hexdigest() != sha256:
            raise ValueError(f"sha256 {h.hexdigest()[:16]}... is not the published {sha256[:16]}...")
        if not target.exists():  # else another process finished first: keep its (checked) copy
            _local(os.replace, tmp, target)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def fetch(name: str, dest=None, base_url: str | None = None, log: Callable[[str], None] = print,
          timeout: float = TIMEOUT_S) -> pathlib.Path:
    """Makes `dest` (default `cache_dir(name)`) hold the four checked IDX .gz files of `name`; returns it.

    Files already there are checked (size + sha256) and kept, never re-requested
    or overwritten (a mismatch is an error naming the file). Raises
    DownloadError, one line, on any failure; nothing partial is left behind.
    """
    dest = pathlib.Path(dest) if dest is not None else cache_dir(name)
    urls = base_urls(name, base_url)
    fixes = _fixes(name, urls)
    missing = {}
    for fname, (size, sha256) in KNOWN_FILES[name].items():
        target = dest / fname
        if not target.exists():
            missing[fname] = (size, sha256)
        elif not (target.is_file() and _digest_ok(target, size, sha256)):
            raise DownloadError(f"{target} exists but is not the published file ({size} bytes, sha256 "
                                f"{sha256}); it was left as it is: delete it to download it again; {fixes}")
    if not missing:
        return dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the download directory {dest} ({_describe(e)}); {fixes}") from None
    if not os.access(dest, os.W_OK | os.X_OK):
        raise DownloadError(f"the download directory {dest} is not writable; {fixes}")
    dead: set[str] = set()  # mirrors that failed with a network error: not asked again
    for fname, (size, sha256) in missing.items():
        target = dest / fname
        errors = []
        for base in urls:
            if base in dead:
                errors.append(f"{base}: skipped (unreachable)")
                continue
            log(f"downloading {base}{fname} ({human_bytes(size)}) -> {target}")
            try:
                _fetch_one(base + fname, target, size, sha256, timeout)
                break
            except _WriteError as e:
                raise DownloadError(f"cannot write {target} ({_describe(e.error)}); nothing partial was kept; "
                                    f"{fixes}") from None
            except ValueError as e:  # a bad body
                errors.append(f"{base}{fname}: {e}")
            except Exception as e:  # pylint: disable=broad-except  # HTTP, socket, http.client errors
                if _network_error(e):
                    dead.add(base)
                errors.append(f"{base}{fname}: {_describe(e)}")
        else:
            raise DownloadError(" ".join(f"could not download {name} {fname} ({'; '.join(errors)}); "
                                         f"nothing partial was kept; {fixes}".split()))
    log(f"{name}: the four IDX files are in {dest} (sizes and sha256 checked)")
    return dest
