"""The network boundary of fetching: which addresses a user's URL may reach, enforced on every connection yt-dlp opens.

A URL from a user must never make MesoScan reach loopback, private, link-local, multicast, reserved or any other
non-global address: not directly, not after DNS resolution, not through a redirect, not through a URL found inside a
page or an HLS manifest. Only http and https.

Where the check sits, and why there:

- yt-dlp sends every request of an extraction and of its native downloaders (pages, APIs, direct files, HLS
  manifests, segments, redirects) through `YoutubeDL.urlopen` → `RequestDirector.send` → a `RequestHandler`.
  `guarded_youtube_dl()` (a YoutubeDL subclass) replaces the director's handler set (normally
  `_REQUEST_HANDLERS`: urllib, requests, websockets, curl_cffi, chosen per request by the RH preference system) with a
  single handler, so no request can fall through to an unguarded one; a request it cannot serve (websocket,
  impersonation, file://, ftp://, a proxy) fails instead of finding another way out.
- That handler is yt-dlp's `requests` handler whose urllib3 pools build their connections with
  `NetGuard.create_connection` (`HTTPConnection._new_conn`, the one place urllib3 opens a socket, for http and for
  https before TLS): resolve the name once, check every resolved address, connect to exactly the checked sockaddr.
  There is no second lookup, so no DNS-rebinding window, and the check sees the IP actually connected to. Redirects
  are followed by `requests` inside the handler and open their connections the same way. The same idea as the
  `advocate` library (a validating urllib3 pool); yt-dlp's own `_helper.create_connection` is only used by the
  urllib/websockets handlers, which are not installed.
- The same handler caps every response read whole (pages, manifests, JSON: what is not streamed media) at
  `max_page_bytes` decoded bytes, after decompression; media is bounded by the download's size limit.
- Checking the URL string first (`AddressPolicy.check_url`) only gives early, clear errors for literal addresses and
  bad schemes; the connection check is the boundary.
- ffmpeg never fetches: `scanner.download` points yt-dlp's `ffmpeg_location` at an empty directory, so yt-dlp's
  ffmpeg downloader (live HLS, unsupported HLS features) fails closed instead of opening its own sockets; HLS
  segments are fetched by yt-dlp's native downloader through this handler. The local HLS remux runs ffmpeg with
  `-protocol_whitelist file`, and PyAV opens downloaded files through `scanner.probe.open_media` (local files and
  container demuxers only), so a "video" that is really a playlist cannot make FFmpeg fetch what it lists.

`allow_private` (tests, local development) or `allowlist` entries open chosen non-global destinations:
`127.0.0.1`, `10.0.0.0/8`, `::1`, `127.0.0.1:8080`, `[::1]:8080`, `media.internal` or `media.internal:9000` (a host
name trusts whatever that name resolves to).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scanner.errors import BlockedAddressError, InvalidUrlError, TooLargeError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
# IANA special-purpose registries; checked in addition to `ipaddress.is_global`, whose tables vary across Python patch
# releases (3.11.7 misses several of these).
_NON_GLOBAL_V4: tuple[tuple[_V4, str], ...] = tuple(
    (_V4(net), why)
    for net, why in (
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata lives here)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_GLOBAL_UNICAST_V6 = _V6("2000::/3")
_NAT64_WELL_KNOWN = _V6("64:ff9b::/96")
_NON_GLOBAL_V6: tuple[tuple[_V6, str], ...] = tuple(
    (_V6(net), why)
    for net, why in (
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/23", "IETF protocol assignments (Teredo, benchmarking, ORCHID)"),
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4 (embeds an IPv4 address)"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing"),
        ("fc00::/7", "unique local (private)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 in the spellings `inet_aton` (so `getaddrinfo`) accepts: `2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        if re.fullmatch(r"0[xX][0-9a-fA-F]*", part):
            values.append(int(part[2:] or "0", 16))
        elif re.fullmatch(r"0[0-7]*", part):
            values.append(int(part, 8))
        elif re.fullmatch(r"[1-9][0-9]*", part):
            values.append(int(part))
        else:
            return None
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes by itself (any IPv4 spelling, IPv6 with or without brackets), else None."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]  # IPv6 zone id
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return _inet_aton(host.removesuffix("."))


def normalize_ip(ip: IPAddress) -> IPAddress:
    """IPv4-mapped (`::ffff:127.0.0.1`) and NAT64 well-known-prefix addresses stand for the IPv4 address inside."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64_WELL_KNOWN:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def non_global_reason(ip: IPAddress) -> str | None:
    """Why an address is not a public internet destination, or None when it is one."""
    ip = normalize_ip(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        if ip == ipaddress.IPv4Address("255.255.255.255"):
            return "broadcast"
        table: Sequence[tuple[Any, str]] = _NON_GLOBAL_V4
    else:
        table = _NON_GLOBAL_V6
    for net, why in table:
        if ip in net:
            return why
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "reserved (outside global unicast 2000::/3)"
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return "not global"
    return None


def _never_a_destination(ip: IPAddress) -> str | None:
    ip = normalize_ip(ip)
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _V4("0.0.0.0/8")):
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    return None


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: a network or a host name, optionally limited to one port."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    hostname: str | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        entry = text.strip()
        if not entry:
            raise ValueError("empty network_allowlist entry")
        port: int | None = None
        if m := re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", entry):
            entry, port = m.group(1), int(m.group(2)) if m.group(2) else None
        elif m := re.fullmatch(r"([^:/\[\]]+):(\d+)", entry):
            entry, port = m.group(1), int(m.group(2))
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"network_allowlist entry {text!r}: port out of range")
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            network = None
        if network is not None:
            return cls(network=network, hostname=None, port=port)
        if (ip := _inet_aton(entry)) is not None:
            return cls(network=ipaddress.ip_network(ip), hostname=None, port=port)
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?", entry):
            raise ValueError(f"network_allowlist entry {text!r} is neither a network, an address nor a host name")
        return cls(network=None, hostname=entry.lower().removesuffix("."), port=port)

    def matches(self, ip: IPAddress, port: int | None, hostname: str | None) -> bool:
        if self.port is not None and port != self.port:
            return False
        if self.network is not None:
            return any(
                candidate in self.network
                for candidate in {ip, normalize_ip(ip)}
                if candidate.version == self.network.version
            )
        return hostname is not None and hostname.lower().removesuffix(".") == self.hostname


class AddressPolicy:
    """Decides whether a destination may be connected to: public addresses yes, the rest only when allowed."""

    def __init__(self, allow_private: bool = False, allowlist: Iterable[str] = ()):
        self.allow_private = allow_private
        self.allowlist = tuple(AllowEntry.parse(entry) for entry in allowlist)

    @classmethod
    def from_settings(cls, settings: Any) -> AddressPolicy:
        return cls(allow_private=settings.allow_private_networks, allowlist=settings.network_allowlist)

    def check_address(self, ip: IPAddress, port: int | None = None, hostname: str | None = None) -> None:
        """Raise BlockedAddressError unless connecting to `ip` (reached as `hostname`, on `port`) is allowed."""
        target = f"{hostname} ({ip})" if hostname and hostname != str(ip) else str(ip)
        if why := _never_a_destination(ip):
            raise BlockedAddressError(f"{target} is not allowed: {why} address")
        why = non_global_reason(ip)
        if why is None or self.allow_private:
            return
        if any(entry.matches(ip, port, hostname) for entry in self.allowlist):
            return
        raise BlockedAddressError(f"{target} is not allowed: {why} address")

    def check_url(self, url: str) -> tuple[str, str, int]:
        """Validate a URL's form (http/https, a host, a valid port) and any literal address in it.

        Returns (scheme, host, port). Host names are checked later, at connection time, on what they resolve to.
        """
        if not isinstance(url, str) or not url.strip():
            raise InvalidUrlError("the URL is empty")
        if any(ord(c) < 0x21 or c == "\x7f" for c in url.strip()):
            raise InvalidUrlError("the URL contains spaces or control characters")
        try:
            parts = urllib.parse.urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise InvalidUrlError(f"malformed URL: {e}") from e
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            shown = f"{scheme}://" if scheme else "a URL without a scheme (a local path?)"
            raise InvalidUrlError(f"only http and https URLs are accepted, not {shown}")
        host = parts.hostname
        if not host:
            raise InvalidUrlError("the URL has no host")
        port = port or DEFAULT_PORTS[scheme]
        if (ip := parse_ip_literal(host)) is not None:
            self.check_address(ip, port, None)
        return scheme, host, port


AddrInfo = tuple[Any, ...]


class NetGuard:
    """Resolves, checks and connects: every socket of a fetch is opened here, so each one is checked.

    One guard per fetch. It remembers the first blocked destination (`violation`) however yt-dlp wraps the error;
    `close()` ends the fetch's network activity.
    """

    def __init__(self, policy: AddressPolicy, resolver: Resolver | None = None):
        self.policy = policy
        self._resolver = resolver or socket.getaddrinfo
        self.violation: BlockedAddressError | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: list[tuple[socket.socket, int, Any, Any]] = []

    def _record(self, error: BlockedAddressError) -> BlockedAddressError:
        with self._lock:
            if self.violation is None:
                self.violation = error
        return error

    def check_url(self, url: str) -> tuple[str, str, int]:
        try:
            return self.policy.check_url(url)
        except BlockedAddressError as e:
            raise self._record(e) from None

    def resolve(self, host: str, port: int) -> list[AddrInfo]:
        """Addresses to connect to for host:port, all checked; raises BlockedAddressError if any is not allowed."""
        literal = parse_ip_literal(host)
        infos: list[AddrInfo]
        if isinstance(literal, ipaddress.IPv4Address):
            infos = [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(literal), port))]
        elif literal is not None:
            infos = [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(literal), port, 0, 0))]
        else:
            infos = list(self._resolver(host, port, 0, socket.SOCK_STREAM))
            if not infos:
                raise OSError(f"no addresses for {host}")
        name = None if literal is not None else host
        for info in infos:
            family, sockaddr = info[0], info[4]
            if family not in (socket.AF_INET, socket.AF_INET6):
                raise self._record(BlockedAddressError(f"{host} resolved to a non-IP address family"))
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            try:
                # A name with any non-allowed address is refused outright rather than filtered.
                self.policy.check_address(ip, port, name)
            except BlockedAddressError as e:
                raise self._record(e) from None
        return infos

    def create_connection(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        socket_options: Iterable[tuple[int, int, Any]] | None = None,
    ) -> socket.socket:
        """Like `socket.create_connection`, but only to checked addresses, resolved once."""
        if self._closed:
            raise ConnectionAbortedError("the fetch was cancelled")
        host, port = address
        infos = self.resolve(host, port)
        error: OSError | None = None
        for family, type_, proto, _canon, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                if timeout is not None:
                    sock.settimeout(timeout)
                sock.connect(sockaddr)
                self._track(sock)
                return sock
            except OSError as e:
                sock.close()
                error = e
        assert error is not None
        raise error

    def _track(self, sock: socket.socket) -> None:
        # TLS wrapping detaches the socket object from its fd, so the fd and both ends are kept to find it again.
        with self._lock:
            self._sockets.append((sock, sock.fileno(), sock.getsockname(), sock.getpeername()))
        if self._closed:
            sock.close()
            raise ConnectionAbortedError("the fetch was cancelled")

    def close(self) -> None:
        """Refuse new connections and shut down the open ones: wakes up a thread blocked reading (timeouts, Ctrl-C)."""
        self._closed = True
        with self._lock:
            tracked = list(self._sockets)
        for sock, fd, name, peer in tracked:
            if sock.fileno() != -1:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                continue
            try:
                current = socket.socket(fileno=fd)  # the TLS socket that took over the fd, if it is still open
            except OSError:
                continue
            try:
                if current.getsockname() == name and current.getpeername() == peer:
                    current.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                current.detach()

    @property
    def closed(self) -> bool:
        return self._closed


# yt-dlp integration -------------------------------------------------------------------------------------------------


def _blocked_request_error() -> type:
    from yt_dlp.networking.exceptions import RequestError

    class BlockedRequestError(RequestError):
        """A RequestError, so yt-dlp neither retries it nor hands the request to another handler."""

        def __init__(self, error: Exception):
            super().__init__(str(error))
            self.scan_error = error

    return BlockedRequestError


@functools.cache
def _yt_dlp_types() -> dict[str, Any]:
    """yt-dlp and urllib3 classes, imported on first use."""
    import urllib3
    import urllib3.connection
    import urllib3.exceptions
    import yt_dlp
    from yt_dlp.networking._requests import RequestsRH

    return {"yt_dlp": yt_dlp, "urllib3": urllib3, "RequestsRH": RequestsRH, "Blocked": _blocked_request_error()}


def _guarded_new_conn(connection: Any, guard: NetGuard) -> socket.socket:
    """`urllib3.connection.HTTPConnection._new_conn`, with the socket opened by the guard."""
    exc = _yt_dlp_types()["urllib3"].exceptions
    timeout = connection.timeout if isinstance(connection.timeout, int | float) else socket.getdefaulttimeout()
    try:
        sock = guard.create_connection(
            (connection._dns_host, connection.port), timeout, socket_options=connection.socket_options
        )
    except (BlockedAddressError, InvalidUrlError) as e:
        raise _yt_dlp_types()["Blocked"](e) from e
    except socket.gaierror as e:
        raise exc.NameResolutionError(connection.host, connection, e) from e
    except TimeoutError as e:
        raise exc.ConnectTimeoutError(connection, f"Connection to {connection.host} timed out") from e
    except OSError as e:
        raise exc.NewConnectionError(connection, f"Failed to establish a new connection: {e}") from e
    return sock


DEFAULT_MAX_PAGE_BYTES = 8 * 1024 * 1024


def _cap_whole_reads(response: Any, limit: int, blocked: type) -> Any:
    """Make `response.read()` (no size: a page, manifest or JSON read whole) fail past `limit` decoded bytes.

    Counted after decompression (urllib3 inflates at most what is asked per read), so a small gzip body cannot
    inflate into gigabytes. Sized reads are how yt-dlp streams media; those are bounded by the size limit instead.
    """
    read_sized = response._real_read
    counted = 0

    def read(amt: int | None = None) -> bytes:
        nonlocal counted
        if amt is not None and amt >= 0:
            data = read_sized(amt)
            counted += len(data)
            return data
        chunks = []
        while chunk := read_sized(1 << 16):
            counted += len(chunk)
            if counted > limit:
                response.close()
                raise blocked(
                    TooLargeError(f"a page or manifest of more than {limit / 2**20:g} MB (decompressed) was refused")
                )
            chunks.append(chunk)
        return b"".join(chunks)

    response._real_read = read
    return response


def guarded_request_handler(guard: NetGuard, max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> type:
    """A yt-dlp RequestHandler class (http/https via `requests`, no proxies) opening every connection via `guard`;
    whole-body reads (pages, manifests, JSON) are capped at `max_page_bytes` after decompression."""
    from yt_dlp.networking.exceptions import HTTPError

    types = _yt_dlp_types()
    urllib3 = types["urllib3"]
    blocked = types["Blocked"]

    class GuardedHTTPConnection(urllib3.connection.HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _guarded_new_conn(self, guard)

    class GuardedHTTPSConnection(urllib3.connection.HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _guarded_new_conn(self, guard)

    class GuardedHTTPPool(urllib3.HTTPConnectionPool):
        ConnectionCls = GuardedHTTPConnection

    class GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPSConnection

    pools = {"http": GuardedHTTPPool, "https": GuardedHTTPSPool}

    class MesoScanGuardedRH(types["RequestsRH"]):
        _SUPPORTED_URL_SCHEMES = ALLOWED_SCHEMES
        _SUPPORTED_PROXY_SCHEMES = ()  # any configured proxy makes the request unsupported: fail closed
        RH_NAME = "mesoscan-guarded"

        def _create_instance(self, cookiejar, legacy_ssl_support=None):
            session = super()._create_instance(cookiejar=cookiejar, legacy_ssl_support=legacy_ssl_support)
            session.max_redirects = 10
            for adapter in session.adapters.values():
                adapter.poolmanager.pool_classes_by_scheme = pools
                adapter.proxy_manager_for = _no_proxies
            return session

        def _get_proxies(self, request):
            return {}

        def _send(self, request):
            try:
                guard.check_url(request.url)
            except (BlockedAddressError, InvalidUrlError) as e:
                raise blocked(e) from e
            try:
                return _cap_whole_reads(super()._send(request), max_page_bytes, blocked)
            except HTTPError as e:  # extractors read error bodies too
                _cap_whole_reads(e.response, max_page_bytes, blocked)
                raise

    return MesoScanGuardedRH


def _no_proxies(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("proxies are disabled for guarded fetches")


def guarded_youtube_dl(params: dict[str, Any], guard: NetGuard, max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> Any:
    """A `yt_dlp.YoutubeDL` whose request director holds only the guarded handler."""
    yt_dlp = _yt_dlp_types()["yt_dlp"]
    handler = guarded_request_handler(guard, max_page_bytes)

    class GuardedYoutubeDL(yt_dlp.YoutubeDL):
        @functools.cached_property
        def _request_director(self):
            return self.build_request_director([handler])

    return GuardedYoutubeDL(params)
