"""Fetching an archive from an http(s) URL, a file:// URL or a local path, verified by MD5.

A mirror that wants a login takes it from `~/.netrc` (or the file `$NETRC` names), as curl and
pip do, never from the URL: the URL is stored in params.yaml, dvc.lock and DVC's run cache, so
the params check refuses one with a login or token (`param_readers.stored_url`). The login goes
only to that host (an unredirected header).

Downloads stream into `<cache>/<md5>.tar.gz.part`, which survives an interrupted run; the next
run asks the server for the rest (HTTP Range) and falls back to a full download if the
server ignores the range. Only a file whose MD5 matches the param is moved to its final
name, so a corrupt or substituted archive never reaches the parser.
"""

from __future__ import annotations

import base64
import hashlib
import netrc
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from cifar_pipeline.core.datasets import SPECS
from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.core.files import atomic_dir
from cifar_pipeline.core.layout import write_raw
from cifar_pipeline.core.params import Params
from cifar_pipeline.data.archive import read_archive

CHUNK = 1 << 20
DOWNLOAD_CACHE = Path("data/.downloads")  # git-ignored; keeps archives and partial downloads across runs
TIMEOUT_S = 60.0


class DownloadError(PipelineError, RuntimeError):
    """The archive could not be fetched, or what was fetched is not the expected file."""


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_path(url: str) -> Path | None:
    """The file a `file://` URL or plain path names; None for network URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            # file://srv/x.tar.gz names host "srv" and path /x.tar.gz: a slash is missing
            meant = f"/{parsed.netloc}{parsed.path}"
            raise DownloadError(
                f"{url!r} names the host '{parsed.netloc}', but file:// URLs are local: "
                f"write file://{meant} (three slashes) or the plain path {meant}"
            )
        return Path(unquote(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise DownloadError(
            f"unsupported URL scheme '{parsed.scheme}' in {url!r}: use https://, http://, file:// or a local path"
        )
    return Path(url).expanduser()


def fetch(url: str, md5: str, cache_dir: Path, timeout: float = TIMEOUT_S) -> Path:
    """Return a local path to the archive at `url` whose MD5 is `md5`.

    A local file is verified in place (no copy); a network file is downloaded, or
    resumed, into `cache_dir` and kept there so reruns need no network.
    """
    source = local_path(url)
    if source is not None:
        if not source.is_file():
            raise DownloadError(
                f"{source} {_what_it_is(source)}; the dataset url in params.yaml must name the .tar.gz archive"
            )
        _verify(source, md5, url)
        return source

    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{md5}.tar.gz"
    if final.is_file() and md5sum(final) == md5:
        return final
    part = cache_dir / f"{md5}.tar.gz.part"
    _download(url, part, timeout)
    try:
        _verify(part, md5, url)
    except DownloadError:
        part.unlink(missing_ok=True)  # a wrong file would otherwise be "resumed" forever
        raise
    os.replace(part, final)
    return final


def _what_it_is(path: Path) -> str:
    """Why `path` is not a readable archive file, in words."""
    if path.is_dir():
        return "is a folder, not an archive (put the archive's own path, e.g. .../cifar-10-binary.tar.gz)"
    if path.exists():
        return "is not a regular file (a device, pipe or socket)"
    if path.is_symlink():
        return "is a broken symbolic link"
    return "does not exist: put the archive there or fix the path"


def _verify(path: Path, md5: str, url: str) -> None:
    actual = md5sum(path)
    if actual != md5:
        raise DownloadError(
            f"MD5 mismatch for {url}: expected {md5}, got {actual} ({path.stat().st_size} bytes); "
            f"the file is corrupt or not the archive the params expect: fix the url or md5 in params.yaml"
        )


def _https_problem() -> str | None:
    """Why this Python cannot open https URLs, or None.

    Without a loadable `ssl` module urllib only says "unknown url type: https", which
    reads like a typo in the URL rather than a broken Python.
    """
    try:
        import ssl  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


def _download(url: str, part: Path, timeout: float) -> None:
    if urlparse(url).scheme == "https" and (problem := _https_problem()):
        raise DownloadError(
            f"cannot download {url}: this Python cannot open https URLs (its ssl module does not load: {problem}); "
            f"use a Python built with ssl, an http:// mirror, or a local copy of the archive"
        )
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "cifar-pipeline"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    login = netrc_login(url)
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (only http/https reach here)
    if login:  # not passed on to whatever host a redirect names (a presigned S3 URL, say)
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode("ascii")
        request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The partial file is already as long as (or longer than) the resource: start over.
            part.unlink()
            return _download(url, part, timeout)
        raise DownloadError(f"HTTP {err.code} {err.reason} for {url}: {_http_hint(err.code, login)}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"cannot reach {url}: {reason}; check the url and your network, or point the url at a local copy"
        ) from None

    with response:
        _save(url, response, part, offset)


def _save(url: str, response, part: Path, offset: int) -> None:
    """Append to `part` if the server resumed at `offset` (206 from there), else write it anew."""
    resuming = offset and response.status == 206 and _range_start(response) == offset
    if not resuming:
        offset = 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    try:
        with (
            open(part, "ab" if resuming else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"download {Path(urlparse(url).path).name}",
                disable=None,
            ) as bar,
        ):
            while chunk := response.read1(CHUNK):  # read1: keep bytes already received if the link stalls
                out.write(chunk)
                bar.update(len(chunk))
    except (TimeoutError, OSError) as err:
        raise DownloadError(
            f"download of {url} stopped after {part.stat().st_size} bytes: {err}; run again to resume from there"
        ) from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(
            f"download of {url} ended early ({part.stat().st_size} of {total} bytes); run again to resume"
        )


def netrc_login(url: str) -> tuple[str, str] | None:
    """The (user, password) of the netrc entry for the URL's host
    (`machine HOST login USER password PASS`), or None."""
    parsed = urlparse(url)
    file = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    if not parsed.hostname or not os.path.isfile(file):
        return None
    try:
        entry = netrc.netrc(file).authenticators(parsed.hostname)
    except netrc.NetrcParseError as err:  # its message can quote a token of the file: a password
        raise DownloadError(
            f"cannot read the logins in {file}: it is malformed at line {err.lineno}; "
            f"write `machine HOST login USER password TOKEN` per host"
        ) from None
    return (entry[0], entry[2]) if entry else None


def _http_hint(code: int, login: tuple[str, str] | None) -> str:
    if code == 401 and login is None:
        return (
            "the mirror wants a login: put `machine HOST login USER password TOKEN` in ~/.netrc "
            "(or the file $NETRC names), which keeps the token out of params.yaml and dvc.lock"
        )
    if code in (401, 403) and login is not None:
        return "the mirror refused the login sent from ~/.netrc (or $NETRC): check the user and token, and its rights"
    return "check the dataset url in params.yaml"


def _range_start(response) -> int | None:
    """First byte of a 206 answer, from `Content-Range: bytes START-END/TOTAL`."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def download_dataset(dataset: str, params: Params, out_dir: Path, cache_dir: Path = DOWNLOAD_CACHE) -> None:
    """Fetch and verify the archive, then store every image and label field as .npy."""
    spec = SPECS[dataset]
    source = params.dataset(dataset)
    archive = fetch(source.url, source.md5, cache_dir)
    raw = read_archive(archive, spec)
    with atomic_dir(out_dir) as tmp:
        write_raw(tmp, raw)
    print(f"{dataset}: {len(raw.train_images)} training and {len(raw.test_images)} test images from {archive}")
