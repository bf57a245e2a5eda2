"""Which network addresses a downloader may contact (server-side request forgery guard).

A crawled URL list is untrusted input: a row can point at `http://127.0.0.1:6379/`, at a cloud
metadata service (`http://169.254.169.254/latest/meta-data/`), or at a host name that resolves
to a private address. These checks classify the *resolved* IP addresses, so every spelling of an
address (decimal `2130706433`, hex `0x7f.1`, IPv4-mapped IPv6 `::ffff:127.0.0.1`) is judged by
what it actually connects to.

Pure functions over strings and `ipaddress` objects; the only I/O is `resolve`, whose resolver is
injectable so tests never touch DNS.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable, Literal
from urllib.parse import urlsplit

Category = Literal["metadata", "loopback", "link_local", "private", "multicast", "unspecified", "reserved"]
CATEGORIES: tuple[str, ...] = ("metadata", "loopback", "link_local", "private", "multicast", "unspecified",
                               "reserved")
BLOCKED_REASON = "blocked_address"
# Error-message prefix the downloader uses, so the reason survives img2dataset's free-text errors.
BLOCKED_PREFIX = "blocked_address:"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata endpoints of the common clouds. They sit inside link-local or shared space,
# but get their own category so that allowing `link_local` never opens them by accident.
_METADATA = {ipaddress.ip_address(a) for a in (
    "169.254.169.254",   # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
    "169.254.170.2",     # AWS ECS task credentials
    "100.100.100.200",   # Alibaba Cloud
    "fd00:ec2::254",     # AWS IPv6
)}
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public, not RFC 1918
Resolver = Callable[..., list]


def _unwrap(ip: IPAddress) -> IPAddress:
    """IPv6 forms that carry an IPv4 address connect to that IPv4 address; judge it instead."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        # IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks)
        if int(ip) >> 32 == 0 and int(ip) > 1:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def classify_ip(ip: str | IPAddress) -> Category | None:
    """The non-public category of an address, or None for a globally routable one."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    ip = _unwrap(ip)
    if ip in _METADATA:
        return "metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_unspecified:  # 0.0.0.0 and :: reach the local host on Linux
        return "unspecified"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return "reserved"
    if (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED) or ip.is_private:
        return "private"
    if not ip.is_global:
        return "reserved"
    return None


def check_ip(ip: str | IPAddress, allow: Iterable[str] = ()) -> str | None:
    """None when the address may be contacted; otherwise a message naming address and category."""
    try:
        cat = classify_ip(ip)
    except ValueError:
        return f"{BLOCKED_PREFIX} {ip!s} is not an IP address"
    if cat is None or cat in set(allow):
        return None
    return f"{BLOCKED_PREFIX} {ip!s} is a {cat} address (allow it with download.allow_private: [{cat}])"


def validate_allow(allow: Iterable[str]) -> list[str]:
    out = list(allow)
    unknown = [a for a in out if a not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown address categories {unknown}; known: {list(CATEGORIES)}")
    return out


def url_host_port(url: str | None) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL, or None when the URL has no usable host."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:  # bad port, bad IPv6 brackets
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return host, port or (443 if parts.scheme.lower() == "https" else 80)


def resolve(host: str, port: int = 80, resolver: Resolver = socket.getaddrinfo) -> list[str]:
    """Every address the host resolves to (what a connection might use). Raises OSError."""
    infos = resolver(host, port, 0, socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_host(host: str, port: int = 80, allow: Iterable[str] = (),
               resolver: Resolver = socket.getaddrinfo) -> str | None:
    """None when every address of `host` may be contacted; else the first blocking message.

    All addresses must pass, not just one: the connecting side may pick any of them. A host that
    does not resolve is not blocked here; the download itself then fails with a connection error.
    """
    try:
        addrs = resolve(host, port, resolver)
    except (OSError, UnicodeError):
        return None
    for a in addrs:
        msg = check_ip(a, allow)
        if msg:
            return f"{msg} (host {host!r})"
    return None


__all__ = ["BLOCKED_PREFIX", "BLOCKED_REASON", "CATEGORIES", "check_host", "check_ip", "classify_ip",
           "resolve", "url_host_port", "validate_allow"]
