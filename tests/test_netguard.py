"""The address policy and its enforcement at the decision point: fake resolvers, no connection beyond loopback."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from scanner.errors import BlockedAddressError, InvalidUrlError
from scanner.netguard import AddressPolicy, NetGuard, guarded_youtube_dl, non_global_reason, parse_ip_literal

NON_GLOBAL = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.5.4",
    "172.31.255.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.251",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",
    "192.0.0.8",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "100::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0.0.0.0",
    "::127.0.0.1",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "64:ff9b:1::1",
    "2002:7f00:1::1",
    "2001::1",
    "2001:2::1",
    "3fff::1",
]
GLOBAL = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "151.101.1.69",
    "2606:4700:4700::1111",
    "2a00:1450:4001:81c::200e",
    "64:ff9b::808:808",
    "::ffff:8.8.8.8",
]


@pytest.fixture
def no_connect(monkeypatch):
    """Any connection attempt at all fails the test (these tests decide without connecting)."""
    attempts: list = []

    def refuse(sock, address):
        attempts.append(address)
        raise AssertionError(f"a connection to {address!r} was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def fake_resolver(table: dict[str, list[str]], calls: list | None = None):
    """getaddrinfo over a fixed table; unknown names fail like NXDOMAIN."""

    def resolve(host, port, family=0, type_=0, proto=0, flags=0):
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos = []
        for address in table[host]:
            if ipaddress.ip_address(address).version == 6:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port)))
        return infos

    return resolve


@pytest.mark.parametrize("address", NON_GLOBAL)
def test_non_global_addresses_are_blocked(address):
    ip = ipaddress.ip_address(address)
    assert non_global_reason(ip) is not None or ip.is_unspecified or ip.is_multicast
    with pytest.raises(BlockedAddressError) as info:
        AddressPolicy().check_address(ip, 80)
    assert info.value.code == "blocked_address"
    assert not info.value.retryable


@pytest.mark.parametrize("address", GLOBAL)
def test_global_addresses_are_allowed(address):
    ip = ipaddress.ip_address(address)
    assert non_global_reason(ip) is None
    AddressPolicy().check_address(ip, 443)


@pytest.mark.parametrize(
    ("spelling", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x0", "0.0.0.0"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("10.1", "10.0.0.1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("[::ffff:7f00:1]", "::ffff:127.0.0.1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_ip_spellings_are_parsed_and_blocked(spelling, address):
    assert parse_ip_literal(spelling) == ipaddress.ip_address(address)
    host = spelling if spelling.startswith("[") or ":" not in spelling else f"[{spelling.replace('%', '%25')}]"
    with pytest.raises(BlockedAddressError):
        AddressPolicy().check_url(f"http://{host}:8080/video.mp4")


@pytest.mark.parametrize("host", ["example.com", "1e100.net", "0x7g.1", "127.0.0.1.example", "256.1.1.1.1", "08"])
def test_names_are_not_mistaken_for_addresses(host):
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/video.mp4",
        "gopher://example.com/",
        "javascript:alert(1)",
        "data:video/mp4;base64,AAAA",
        "./clip.mp4",
        "/tmp/clip.mp4",
        "clip.mp4",
        "",
        "   ",
        "http://",
        "https:///x",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://example.com/\nHost: evil",
        "ws://example.com/",
    ],
)
def test_urls_other_than_http_are_invalid(url):
    with pytest.raises(InvalidUrlError) as info:
        AddressPolicy().check_url(url)
    assert info.value.code == "invalid_url"


def test_check_url_returns_scheme_host_port():
    policy = AddressPolicy()
    assert policy.check_url("https://Example.COM/watch?v=1") == ("https", "example.com", 443)
    assert policy.check_url("HTTP://8.8.8.8:8080/a.mp4") == ("http", "8.8.8.8", 8080)


def test_allowlist_entries():
    policy = AddressPolicy(allowlist=["127.0.0.1:8080", "10.0.0.0/8", "[::1]:9000", "media.internal:9000", "fd00::/8"])
    loopback = ipaddress.ip_address("127.0.0.1")
    policy.check_address(loopback, 8080)
    policy.check_address(ipaddress.ip_address("::ffff:127.0.0.1"), 8080)  # the same destination
    with pytest.raises(BlockedAddressError):
        policy.check_address(loopback, 8081)
    with pytest.raises(BlockedAddressError):
        policy.check_address(ipaddress.ip_address("127.0.0.2"), 8080)
    policy.check_address(ipaddress.ip_address("10.20.30.40"), 1)
    with pytest.raises(BlockedAddressError):
        policy.check_address(ipaddress.ip_address("192.168.0.1"), 80)
    policy.check_address(ipaddress.ip_address("::1"), 9000)
    with pytest.raises(BlockedAddressError):
        policy.check_address(ipaddress.ip_address("::1"), 9001)
    policy.check_address(ipaddress.ip_address("fd01::5"), 443)
    policy.check_address(ipaddress.ip_address("192.168.7.7"), 9000, "media.internal")
    with pytest.raises(BlockedAddressError):
        policy.check_address(ipaddress.ip_address("192.168.7.7"), 9000, "other.internal")
    # Never a destination, allowlisted or not.
    with pytest.raises(BlockedAddressError):
        AddressPolicy(allowlist=["0.0.0.0/0"]).check_address(ipaddress.ip_address("0.0.0.0"), 80)


@pytest.mark.parametrize("entry", ["not a host!", "10.0.0.0/33", "127.0.0.1:70000", "http://x/", ""])
def test_bad_allowlist_entries_are_rejected(entry):
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the entry
        AddressPolicy(allowlist=[entry])


def test_allow_private_opens_private_ranges_but_not_unroutable_ones():
    policy = AddressPolicy(allow_private=True)
    for address in ("127.0.0.1", "10.1.1.1", "::1", "fd00::1", "169.254.169.254"):
        policy.check_address(ipaddress.ip_address(address), 80)
    for address in ("0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"):
        with pytest.raises(BlockedAddressError):
            policy.check_address(ipaddress.ip_address(address), 80)


# The guard: resolve once, check every address, connect only to what was checked -------------------------------------

INTERNAL_NAMES = {
    "rfc1918.test": ["10.1.2.3"],
    "corp.test": ["172.20.0.5"],
    "home.test": ["192.168.0.10"],
    "metadata.test": ["169.254.169.254"],
    "cgnat.test": ["100.64.1.1"],
    "multicast.test": ["224.0.0.1"],
    "zero.test": ["0.0.0.0"],
    "ula.test": ["fd00::1"],
    "linklocal6.test": ["fe80::1"],
    "doc6.test": ["2001:db8::1"],
    "mapped.test": ["::ffff:10.0.0.1"],
    "loopback.test": ["127.0.0.1"],
    "loopback6.test": ["::1"],
    "mixed.test": ["8.8.8.8", "10.0.0.1"],  # one bad answer is enough to refuse the name
}


@pytest.mark.parametrize("name", sorted(INTERNAL_NAMES))
def test_guard_blocks_names_resolving_to_internal_addresses(name, no_connect):
    guard = NetGuard(AddressPolicy(), resolver=fake_resolver(INTERNAL_NAMES))
    with pytest.raises(BlockedAddressError) as info:
        guard.create_connection((name, 80), timeout=1)
    assert name in info.value.message
    assert guard.violation is info.value
    assert no_connect == []


def test_guard_connects_to_the_address_it_checked_and_resolves_once():
    """DNS rebinding: a second lookup would answer 10.0.0.1; the guard never makes one."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    calls: list[str] = []

    def rebinding(host, *args, **kwargs):
        calls.append(host)
        return fake_resolver({host: next(answers)})(host, *args, **kwargs)

    guard = NetGuard(AddressPolicy(allowlist=[f"127.0.0.1:{port}"]), resolver=rebinding)
    with listener, guard.create_connection(("rebind.test", port), timeout=2) as sock:
        accepted, _ = listener.accept()
        with accepted:
            assert sock.getpeername() == ("127.0.0.1", port)
    assert calls == ["rebind.test"]


def test_guard_does_not_resolve_literal_addresses(no_connect):
    calls: list[str] = []
    guard = NetGuard(AddressPolicy(), resolver=fake_resolver({}, calls))
    for host in ("127.0.0.1", "2130706433", "::ffff:127.0.0.1", "0"):
        with pytest.raises(BlockedAddressError):
            guard.create_connection((host, 80))
    assert calls == []
    assert no_connect == []


def test_close_interrupts_a_blocked_read_and_refuses_new_connections():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    guard = NetGuard(AddressPolicy(allowlist=[f"127.0.0.1:{port}"]))
    sock = guard.create_connection(("127.0.0.1", port), timeout=30)
    accepted, _ = listener.accept()
    result: list = []

    def read():
        try:
            result.append(sock.recv(10))
        except OSError as e:
            result.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    started = time.monotonic()
    guard.close()
    reader.join(5)
    assert not reader.is_alive()
    assert time.monotonic() - started < 2
    assert result in ([b""],) or isinstance(result[0], OSError)
    with pytest.raises(ConnectionAbortedError):
        guard.create_connection(("127.0.0.1", port))
    for s in (sock, accepted, listener):
        s.close()


# The yt-dlp side: every request goes through the one guarded handler -------------------------------------------------


def ydl_for(guard: NetGuard):
    return guarded_youtube_dl({"quiet": True, "no_warnings": True, "proxy": "", "socket_timeout": 2}, guard)


def test_yt_dlp_has_only_the_guarded_handler():
    with ydl_for(NetGuard(AddressPolicy())) as ydl:
        assert list(ydl._request_director.handlers) == ["MesoScanGuarded"]


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("name", ["metadata.test", "rfc1918.test", "ula.test", "mapped.test"])
def test_yt_dlp_requests_to_internal_names_are_blocked(name, scheme, no_connect):
    from yt_dlp.networking.exceptions import RequestError

    guard = NetGuard(AddressPolicy(), resolver=fake_resolver(INTERNAL_NAMES))
    with ydl_for(guard) as ydl, pytest.raises(RequestError):
        ydl.urlopen(f"{scheme}://{name}/latest/meta-data/")
    assert isinstance(guard.violation, BlockedAddressError)
    assert no_connect == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "ws://127.0.0.1:1/", "data:,hello"])
def test_yt_dlp_cannot_use_other_schemes(url, no_connect):
    from yt_dlp.networking.exceptions import RequestError

    with ydl_for(NetGuard(AddressPolicy())) as ydl, pytest.raises(RequestError):
        ydl.urlopen(url)
    assert no_connect == []


def test_yt_dlp_refuses_proxies(no_connect):
    from yt_dlp.networking.exceptions import RequestError

    params = {"quiet": True, "proxy": "http://127.0.0.1:3128"}
    with guarded_youtube_dl(params, NetGuard(AddressPolicy(allow_private=True))) as ydl, pytest.raises(RequestError):
        ydl.urlopen("http://127.0.0.1:1/")
    assert no_connect == []
