"""``service.fetch`` beyond reliability.md's corpus: IPv6 forms that carry an IPv4 address, and the
link-local range (the cloud metadata service) refused even where private addresses are allowed."""

from __future__ import annotations

import socket
from typing import Any
from unittest import mock

import pytest

from service import fetch
from service.callbacks import check_callback_url
from service.errors import InvalidParams
from service.fetch import SourceURLBlocked, connect_checked, fetch_image_url, parse_source_url


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"the fetch went on to the network: {args}")


def _resolver(*answers: str) -> Any:
    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers]

    return resolve


@pytest.mark.parametrize(
    "host",
    [
        "[::127.0.0.1]",  # IPv4-compatible (deprecated ::/96)
        "[::a9fe:a9fe]",
        "[::ffff:0:127.0.0.1]",  # IPv4-translated (SIIT)
        "[::ffff:0:a00:1]",
        "[64:ff9b:1::10.0.0.1]",  # local-use NAT64 (RFC 8215)
        "[64:ff9b:1::808:808]",  # a translator of the operator's own, whatever it embeds
    ],
)
def test_ipv6_forms_carrying_an_ipv4_address_are_refused(host: str) -> None:
    with mock.patch.object(fetch, "_connect", _never), pytest.raises(SourceURLBlocked):
        fetch_image_url(f"http://{host}/x.png", max_bytes=1024, timeout_s=1, resolver=_never)


def test_a_name_resolving_to_such_a_form_is_refused() -> None:
    with mock.patch.object(fetch, "_connect", _never), pytest.raises(SourceURLBlocked, match="embeds"):
        fetch_image_url(
            "http://rebind.example/x.png", max_bytes=1024, timeout_s=1, resolver=_resolver("::7f00:1")
        )


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://[fe80::1]/",
    ],
)
def test_allowing_private_addresses_never_allows_the_metadata_service(url: str) -> None:
    with pytest.raises(SourceURLBlocked, match=r"169\.254\.0\.0/16|fd00:ec2::254|fe80::/10"):
        parse_source_url(url, allow_private=True)
    with pytest.raises(InvalidParams):
        check_callback_url(url, allow_private=True, secret="s")


def test_allowing_private_addresses_still_allows_loopback_and_private_ones() -> None:
    for url in ("http://127.0.0.1:8080/", "http://[::1]/", "http://10.1.2.3/", "http://[fd00::1]/"):
        assert parse_source_url(url, allow_private=True).literal is not None


def test_a_name_resolving_to_the_metadata_service_is_refused_with_private_allowed() -> None:
    with mock.patch.object(fetch, "_connect", _never), pytest.raises(SourceURLBlocked):
        fetch_image_url(
            "http://metadata.example/x.png",
            max_bytes=1024,
            timeout_s=1,
            resolver=_resolver("169.254.169.254"),
            allow_private=True,
        )


def test_connect_checked_never_connects_to_a_refused_address() -> None:
    with mock.patch.object(fetch, "_connect", _never):
        for host, allow_private in (("10.0.0.1", False), ("169.254.169.254", True), ("[::1]", False)):
            with pytest.raises(SourceURLBlocked):
                connect_checked(host, 80, timeout_s=1, allow_private=allow_private, resolver=_never)
        with pytest.raises(SourceURLBlocked):
            connect_checked(
                "rebind.example", 80, timeout_s=1, allow_private=False, resolver=_resolver("127.0.0.1")
            )
