import hashlib
import sys

import pytest

from cifar_pipeline.data.download import DownloadError, fetch, local_path


def test_http_download_is_verified_and_kept(server, archives, tmp_path):
    path, md5 = archives["cifar10"]
    got = fetch(server.url(path.name), md5, tmp_path)
    assert got == tmp_path / f"{md5}.tar.gz"
    assert got.read_bytes() == path.read_bytes()
    fetch(server.url(path.name), md5, tmp_path)
    assert len(server.ranges) == 1  # second call used the verified copy


def test_resumes_a_partial_download_with_range(server, archives, tmp_path):
    path, md5 = archives["cifar100"]
    half = path.stat().st_size // 2
    (tmp_path / f"{md5}.tar.gz.part").write_bytes(path.read_bytes()[:half])
    got = fetch(server.url(path.name), md5, tmp_path)
    assert server.ranges == [f"bytes={half}-"]
    assert hashlib.md5(got.read_bytes()).hexdigest() == md5


def test_server_without_range_support_falls_back_to_full_download(server, archives, tmp_path):
    path, md5 = archives["cifar10"]
    server.honour_range = False
    (tmp_path / f"{md5}.tar.gz.part").write_bytes(path.read_bytes()[:1000])
    got = fetch(server.url(path.name), md5, tmp_path)
    assert got.read_bytes() == path.read_bytes()


def test_partial_longer_than_the_file_starts_over(server, archives, tmp_path):
    path, md5 = archives["cifar10"]
    (tmp_path / f"{md5}.tar.gz.part").write_bytes(path.read_bytes() + b"junk")
    assert fetch(server.url(path.name), md5, tmp_path).read_bytes() == path.read_bytes()


def test_md5_mismatch_is_an_error_and_leaves_nothing(server, archives, tmp_path):
    path, _ = archives["cifar10"]
    with pytest.raises(DownloadError, match="MD5 mismatch .* expected 0{32}"):
        fetch(server.url(path.name), "0" * 32, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("form", ["path", "file-url"])
def test_local_archives_are_verified_in_place(archives, tmp_path, form):
    path, md5 = archives["cifar10"]
    url = str(path) if form == "path" else path.as_uri()
    assert fetch(url, md5, tmp_path) == path
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        fetch(url, "f" * 32, tmp_path)


def test_missing_local_file(tmp_path):
    with pytest.raises(DownloadError, match="does not exist"):
        fetch(str(tmp_path / "nope.tar.gz"), "0" * 32, tmp_path)


def test_a_folder_or_a_device_is_named_for_what_it_is(tmp_path):
    with pytest.raises(DownloadError, match="is a folder, not an archive"):
        fetch(str(tmp_path), "0" * 32, tmp_path)
    with pytest.raises(DownloadError, match="not a regular file"):
        fetch("/dev/zero", "0" * 32, tmp_path)


def test_file_url_with_two_slashes_suggests_three(tmp_path):
    with pytest.raises(DownloadError, match=r"names the host 'srv'.*write file:///srv/x.tar.gz \(three slashes\)"):
        fetch("file://srv/x.tar.gz", "0" * 32, tmp_path)


def test_http_404(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("missing.tar.gz"), "0" * 32, tmp_path)


def test_connection_refused(tmp_path):
    import socket

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch(f"http://127.0.0.1:{port}/a.tar.gz", "0" * 32, tmp_path)


def test_stalled_server_times_out_and_keeps_the_partial_for_resume(server, archives, tmp_path):
    path, md5 = archives["cifar100"]
    server.stall_after = 5000
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(server.url(path.name), md5, tmp_path, timeout=0.5)
    assert (tmp_path / f"{md5}.tar.gz.part").stat().st_size == 5000
    server.stall_after = None
    assert fetch(server.url(path.name), md5, tmp_path).read_bytes() == path.read_bytes()
    assert server.ranges[-1] == "bytes=5000-"


def test_unsupported_scheme():
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        local_path("ftp://example.org/a.tar.gz")


def test_https_without_a_working_ssl_module_says_so(monkeypatch, tmp_path):
    """urllib alone reports "unknown url type: https", which reads like a typo in the URL."""
    monkeypatch.setitem(sys.modules, "ssl", None)  # `import ssl` now fails, as in a Python built without it
    with pytest.raises(DownloadError, match="this Python cannot open https URLs"):
        fetch("https://127.0.0.1:1/cifar-10-binary.tar.gz", "0" * 32, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_authenticated_mirror_takes_the_login_from_netrc(server, archives, tmp_path, monkeypatch):
    """As curl and pip do; the password never appears in an error, and only its host gets it."""
    path, md5 = archives["cifar10"]
    server.login = ("reader", "t0k:en")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(DownloadError, match=r"HTTP 401 .*the mirror wants a login: put `machine HOST login"):
        fetch(server.url(path.name), md5, tmp_path / "a")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login reader password wrong-pw\n")
    with pytest.raises(DownloadError, match="refused the login sent") as refused:
        fetch(server.url(path.name), md5, tmp_path / "a")
    assert "wrong-pw" not in str(refused.value)
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login reader password t0k:en\n")
    assert fetch(server.url(path.name), md5, tmp_path / "c").read_bytes() == path.read_bytes()
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login reader\nt0k:en\n")
    with pytest.raises(DownloadError, match=r"cannot read the logins in .*netrc: it is malformed at line \d") as bad:
        fetch(server.url(path.name), md5, tmp_path / "d")
    assert "t0k" not in str(bad.value)
