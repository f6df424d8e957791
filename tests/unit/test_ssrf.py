"""The callback URL guard: every non-public address is refused, however it is spelled or resolved."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from ferry.errors import CallbackUrlForbidden
from ferry.jobs.ssrf import CallbackTarget, address_kind, check_callback_url

PUBLIC = "93.184.215.14"


def fixed(*addresses: str, calls: list[tuple[str, int]] | None = None):
    """A resolver that answers ``addresses`` for every name and records what it was asked."""

    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append((host, port))
        return list(addresses)

    return resolve


def check(url: str, *, allow_http: bool = True, allow_hosts: tuple[str, ...] = (), resolver=None) -> CallbackTarget:
    return asyncio.run(check_callback_url(url, allow_http=allow_http, allow_hosts=allow_hosts, resolver=resolver))


def refused(url: str, match: str, **kwargs) -> str:
    with pytest.raises(CallbackUrlForbidden, match=match) as info:
        check(url, **kwargs)
    assert info.value.code == "callback_url_forbidden"
    assert info.value.status == 422
    return info.value.message


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1/cb", "loopback"),
        ("http://10.0.0.1/cb", "private"),
        ("http://172.16.0.1/cb", "private"),
        ("http://192.168.1.1/cb", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://100.64.0.1/cb", "CGNAT"),
        ("http://[::1]/cb", "loopback"),
        ("http://[fc00::1]/cb", "unique-local"),
        ("http://[fe80::1]/cb", "link-local"),
        ("http://[::ffff:127.0.0.1]/cb", "IPv4-mapped"),
        ("http://[::ffff:8.8.8.8]/cb", "IPv4-mapped"),
        ("http://0.0.0.0/cb", "unspecified"),
        ("http://224.0.0.1/cb", "multicast"),
        ("http://240.0.0.1/cb", "reserved"),
        ("http://255.255.255.255/cb", "reserved"),
        ("http://[fec0::1]/cb", "site-local"),
        ("http://[ff02::1]/cb", "multicast"),
        ("http://[64:ff9b::a9fe:a9fe]/cb", "NAT64 address of a link-local"),  # 169.254.169.254 via NAT64
        ("http://[2002:a00:1::]/cb", "6to4 address of a private"),  # 10.0.0.1 via 6to4
        ("https://127.0.0.1:8443/cb", "loopback"),
    ],
)
def test_ip_literals_refused(url: str, kind: str) -> None:
    message = refused(url, kind)
    assert "points to a non-public address" in message


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/", "http://0x7f.1/", "http://017700000001/", "http://127.1/", "http://0/"],
)
def test_numeric_spellings_of_loopback_refused_by_resolved_address(url: str) -> None:
    # getaddrinfo (inet_aton) turns these into 127.0.0.1 / 0.0.0.0 with no network involved.
    refused(url, "resolves to a non-public address")


def test_name_resolving_to_a_private_address_refused_without_echoing_it() -> None:
    message = refused("https://internal.example/cb", r"non-public address \(private\)", resolver=fixed("10.0.0.5"))
    assert "10.0.0.5" not in message  # the API must not reveal internal DNS answers


def test_any_private_address_among_the_answers_refuses() -> None:
    refused("https://mixed.example/cb", "private", resolver=fixed(PUBLIC, "192.168.0.7"))
    refused("https://mixed.example/cb", "loopback", resolver=fixed("2606:4700::1", "::1"))


def test_localhost_with_the_real_resolver_refused() -> None:
    refused("http://localhost:8080/cb", "loopback")


def test_unresolvable_host_refused() -> None:
    refused("https://nothing.example/", "does not resolve", resolver=fixed())

    async def broken(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    refused("https://nothing.example/", "does not resolve", resolver=broken)
    refused("https://no-such-host.invalid/", "does not resolve")  # RFC 6761: never resolves


def test_resolver_answer_that_is_not_an_ip_refused() -> None:
    refused("https://odd.example/", "not an IP", resolver=fixed("not-an-ip"))


def test_public_address_accepted_and_pinned_after_one_resolution() -> None:
    calls: list[tuple[str, int]] = []
    target = check("https://Hooks.Example.com/cb?x=1", allow_http=False, resolver=fixed(PUBLIC, calls=calls))
    assert target == CallbackTarget(
        url="https://Hooks.Example.com/cb?x=1", scheme="https", host="hooks.example.com", port=443, address=PUBLIC
    )
    assert calls == [("hooks.example.com", 443)]
    assert target.host_header == "hooks.example.com"


def test_first_of_several_public_addresses_is_pinned() -> None:
    target = check("http://h.example:8080/", resolver=fixed("2606:4700::1", PUBLIC, "2606:4700::1"))
    assert (target.address, target.port, target.host_header) == ("2606:4700::1", 8080, "h.example:8080")


def test_public_ip_literal_accepted_without_resolving() -> None:
    calls: list[tuple[str, int]] = []
    target = check(f"https://{PUBLIC}/cb", resolver=fixed("10.0.0.1", calls=calls))
    assert target.address == PUBLIC
    assert calls == []


def test_http_refused_without_allow_http() -> None:
    refused("http://hooks.example.com/cb", "scheme must be https", allow_http=False, resolver=fixed(PUBLIC))
    assert check("http://hooks.example.com/cb", allow_http=True, resolver=fixed(PUBLIC)).scheme == "http"


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/", "file:///etc/passwd", "gopher://x/", "//x/", "x"])
def test_other_schemes_refused(url: str) -> None:
    refused(url, "scheme must be", resolver=fixed(PUBLIC))


@pytest.mark.parametrize(
    "url",
    ["https://user:pw@hooks.example.com/", "https://user@hooks.example.com/", "https://:pw@hooks.example.com/"],
)
def test_userinfo_refused_even_for_allowlisted_hosts(url: str) -> None:
    refused(url, "credentials", resolver=fixed(PUBLIC), allow_hosts=("hooks.example.com",))


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("https:///path", "no host"),
        ("https://hooks.example.com:0/", "port"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://hooks.example.com\\@127.0.0.1/", "backslash"),
        ("https://hooks.example.com\t/", "whitespace"),
        ("https://hooks.exa mple.com/", "whitespace"),
        ("https://hooks%2eexample.com/", "domain name"),
        ("https://[not-ipv6]/", "not a valid URL|IPv6"),
        ("https://hooks.example.com/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_malformed_urls_refused(url: str, match: str) -> None:
    refused(url, match, resolver=fixed(PUBLIC))


def test_allowlisted_loopback_accepted_with_http() -> None:
    target = check("http://127.0.0.1:9000/cb", allow_http=True, allow_hosts=("127.0.0.1:9000",))
    assert (target.address, target.port, target.host_header) == ("127.0.0.1", 9000, "127.0.0.1:9000")


@pytest.mark.parametrize(
    ("url", "entries"),
    [
        ("http://127.0.0.1:9001/cb", ("127.0.0.1:9000",)),  # another port of an allowlisted host
        ("http://127.0.0.1:9000/cb", ("127.0.0.1",)),  # a bare host means the scheme's default port only
        ("http://127.0.0.1/cb", ("127.0.0.1:9000",)),
        ("http://127.0.0.1:9000/other", ("http://127.0.0.1:9000/cb/",)),  # outside the URL prefix
        ("http://127.0.0.1:9000/cbx", ("http://127.0.0.1:9000/cb",)),  # a prefix ends at a path segment
        ("https://127.0.0.1:9000/cb/", ("http://127.0.0.1:9000/cb/",)),  # another scheme
        ("http://127.0.0.1:9000/cb", ("127.0.0.1:x",)),  # a malformed entry allows nothing
    ],
)
def test_allowlist_entries_name_a_port_never_a_whole_host(url: str, entries: tuple[str, ...]) -> None:
    refused(url, "loopback", allow_hosts=entries)


@pytest.mark.parametrize(
    ("url", "entries"),
    [
        ("http://127.0.0.1:9000/cb", ("127.0.0.1:9000",)),
        ("http://127.0.0.1/cb", ("127.0.0.1",)),
        ("http://127.0.0.1:80/cb", ("127.0.0.1:80",)),
        ("http://[::1]:81/", ("[::1]:81",)),
        ("http://127.0.0.1:9000/cb/job-7", ("http://127.0.0.1:9000/cb/",)),
        ("http://127.0.0.1:9000/cb", ("http://127.0.0.1:9000/cb",)),
        ("http://127.0.0.1:9000/cb/x", ("HTTP://127.0.0.1:9000/cb",)),
    ],
)
def test_allowlist_entries_accepted(url: str, entries: tuple[str, ...]) -> None:
    assert check(url, allow_hosts=entries).address in ("127.0.0.1", "::1")


def test_allowlist_never_permits_http() -> None:
    refused("http://127.0.0.1:9000/cb", "scheme must be https", allow_http=False, allow_hosts=("127.0.0.1",))


def test_allowlist_matches_the_host_exactly_as_written() -> None:
    hosts = ("receiver.internal", "[::1]:81")
    assert check("https://RECEIVER.internal/", allow_hosts=hosts, resolver=fixed("10.1.2.3")).address == "10.1.2.3"
    assert check("http://[::1]:81/", allow_hosts=hosts).host_header == "[::1]:81"
    # Other spellings of an allowlisted address, and subdomains of an allowlisted name, stay refused.
    refused("http://2130706433/", "loopback", allow_hosts=("127.0.0.1",))
    refused("http://[0:0::1]/", "loopback", allow_hosts=("127.0.0.1", "::1x"))
    refused("https://a.receiver.internal/", "private", allow_hosts=hosts, resolver=fixed("10.1.2.3"))
    refused("https://receiver.internal./", "private", allow_hosts=hosts, resolver=fixed("10.1.2.3"))


def test_idn_host_is_resolved_in_its_ascii_form() -> None:
    calls: list[tuple[str, int]] = []
    target = check("https://bücher.example/", resolver=fixed(PUBLIC, calls=calls))
    assert calls == [("xn--bcher-kva.example", 443)]
    assert target.host == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "ip",
    [PUBLIC, "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::"],
)
def test_public_unicast_addresses_have_no_objection(ip: str) -> None:
    assert address_kind(ipaddress.ip_address(ip)) is None


@pytest.mark.parametrize(
    "ip",
    ["192.0.0.8", "192.0.2.1", "198.18.0.1", "198.51.100.1", "203.0.113.1", "::", "::10.0.0.1", "100::1",
     "2001:db8::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "64:ff9b:1::a00:1", "fe80::1%eth0"],
)  # fmt: skip
def test_special_purpose_addresses_objected_to(ip: str) -> None:
    assert address_kind(ipaddress.ip_address(ip)) is not None
