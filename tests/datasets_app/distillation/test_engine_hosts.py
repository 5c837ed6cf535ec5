"""The outbound address policy for teacher base URLs, with a fake resolver (no real DNS)."""
from __future__ import annotations

import socket
from typing import Any

import pytest

from datasets_app.distillation.engine.hosts import (
    HostRefused,
    check_base_url,
    check_teacher_address,
    default_host,
    parse_allowed_hosts,
)

DEFAULTS = ["api.openai.com", "api.anthropic.com"]
PUBLIC = "104.18.6.192"
DNS: dict[str, list[str]] = {
    "api.openai.com": [PUBLIC],
    "api.anthropic.com": ["160.79.104.10"],
    "vllm.internal": ["10.0.0.5"],
    "localhost": ["127.0.0.1", "::1"],
    "xn--bcher-kva.example": ["93.184.216.34"],
}


def resolver(overrides: dict[str, list[str]] | None = None) -> Any:
    """getaddrinfo's shape from a table; unknown names fail as getaddrinfo does."""
    table = {**DNS, **(overrides or {})}
    asked: list[str] = []

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in table[host]]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


ACCEPTED = [
    ("https://api.openai.com/v1", DEFAULTS, None),
    ("https://API.OpenAI.com./v1", DEFAULTS, None),  # case and a trailing dot do not dodge the list
    # an internal server: its name and its address are both listed (the name alone could be re-pointed)
    ("http://vllm.internal:8000/v1", ["vllm.internal", "10.0.0.5"], None),
    ("http://vllm.internal:8000/v1", ["vllm.internal:8000", "10.0.0.5:8000"], None),
    ("http://localhost:8080/v1", ["localhost", "127.0.0.1", "::1"], None),
    ("http://10.0.0.5:8000/v1", ["10.0.0.5"], None),  # a listed address literal
    ("http://127.0.0.1:8080/v1", ["127.0.0.1:8080"], None),
    ("http://[::1]:8080/v1", ["::1"], None),
    ("http://[::1]:8080/v1", ["[::1]:8080"], None),
    ("https://api.openai.com/v1", ["api.openai.com", "10.0.0.5"], {"api.openai.com": ["10.0.0.5"]}),
    ("https://api.openai.com/v1", DEFAULTS + ["127.0.0.1"], {"api.openai.com": ["::ffff:127.0.0.1"]}),
    ("https://api.openai.com:443/v1", ["api.openai.com:443"], None),  # the scheme's port counts as given
    ("https://bücher.example/v1", ["xn--bcher-kva.example"], None),  # IDNA on the URL side
    ("https://bücher.example/v1", ["BÜCHER.example"], None),  # and on the list side
]

REFUSED = [
    ("https://evil.example/v1", DEFAULTS, None,
     "host 'evil.example' is not on NEXUS_TEACHER_ALLOWED_HOSTS (allowed: api.openai.com, api.anthropic.com)"),
    ("http://10.0.0.5/v1", ["vllm.internal"], None, "host '10.0.0.5' is not on NEXUS_TEACHER_ALLOWED_HOSTS"),
    ("http://vllm.internal:9000/v1", ["vllm.internal:8000"], None,
     "host 'vllm.internal' port 9000 is not on NEXUS_TEACHER_ALLOWED_HOSTS (allowed: vllm.internal:8000)"),
    ("http://vllm.internal/v1", ["vllm.internal:8000"], None, "port 80 is not on"),
    ("http://[::1]:8081/v1", ["[::1]:8080"], None, "host '::1' port 8081 is not on"),
    ("https://evil.example/v1", [], None, "(allowed: none)"),
    # a provider's public host answering with an internal address: refused unless that address is listed
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": ["10.1.2.3"]},
     "host 'api.openai.com' resolves to 10.1.2.3, a private address"),
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": ["127.0.0.1"]}, "resolves to 127.0.0.1, a loopback"),
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": ["169.254.169.254"]},
     "resolves to 169.254.169.254, a link-local"),
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": ["::1"]}, "resolves to ::1, a loopback"),
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": ["::ffff:127.0.0.1"]},
     "resolves to ::ffff:127.0.0.1, a loopback"),
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": ["0.0.0.0"]}, "resolves to 0.0.0.0, an unspecified"),
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": ["100.64.0.1"]}, "resolves to 100.64.0.1"),
    ("https://api.openai.com/v1", DEFAULTS, {"api.openai.com": [PUBLIC, "192.168.1.9"]},
     "resolves to 192.168.1.9"),  # one bad address of several is enough: the SDK may pick any
    ("https://api.openai.com/v1", ["api.openai.com", "10.0.0.6"], {"api.openai.com": ["10.0.0.5"]},
     "list that address in NEXUS_TEACHER_ALLOWED_HOSTS"),
    ("ftp://api.openai.com/v1", DEFAULTS, None, "only http and https addresses are allowed, not 'ftp'"),
    ("file:///etc/passwd", DEFAULTS, None, "only http and https addresses are allowed, not 'file'"),
    ("api.openai.com/v1", DEFAULTS, None, "only http and https addresses are allowed"),
    ("https://user:pass@api.openai.com/v1", DEFAULTS, None, "user name or password"),
    ("https://api.openai.com@evil.example/v1", DEFAULTS, None, "user name or password"),
    ("https://nowhere.example/v1", ["nowhere.example"], None, "host 'nowhere.example' does not resolve"),
    ("https:///v1", DEFAULTS, None, "has no host"),
    ("https://api.openai.com:99999/v1", DEFAULTS, None, "is not a valid URL"),
    ("https://api.openai.com /v1", DEFAULTS, None, "spaces or control characters"),
]


@pytest.mark.parametrize(("url", "allowed", "dns"), ACCEPTED)
def test_allowed_addresses_pass(url: str, allowed: list[str], dns: dict[str, list[str]] | None) -> None:
    check_base_url(url, allowed, resolve=resolver(dns))


@pytest.mark.parametrize(("url", "allowed", "dns", "reason"), REFUSED)
def test_refused_addresses_say_what_and_why(url: str, allowed: list[str], dns: dict[str, list[str]] | None,
                                            reason: str) -> None:
    with pytest.raises(HostRefused) as caught:
        check_base_url(url, allowed, resolve=resolver(dns))
    assert caught.value.message.startswith("teacher_config.base_url: ")
    assert reason in caught.value.message
    assert str(caught.value) == caught.value.message


def test_empty_base_url_is_the_providers_default() -> None:
    check_base_url("", [], resolve=resolver())


def test_unlisted_hosts_are_refused_before_any_dns_lookup() -> None:
    resolve = resolver()
    with pytest.raises(HostRefused):
        check_base_url("https://evil.example/v1", DEFAULTS, resolve=resolve)
    assert resolve.asked == []


def test_provider_default_host_must_be_allowed_too() -> None:
    assert (default_host("openai"), default_host("anthropic"), default_host("deployed")) == (
        "api.openai.com", "api.anthropic.com", None)
    check_teacher_address("anthropic", "", DEFAULTS, resolve=resolver())
    with pytest.raises(HostRefused, match="host 'api.openai.com' is not on NEXUS_TEACHER_ALLOWED_HOSTS"):
        check_teacher_address("openai", "", ["api.anthropic.com"], resolve=resolver())
    with pytest.raises(HostRefused, match="resolves to 127.0.0.1"):
        check_teacher_address("openai", "", DEFAULTS, resolve=resolver({"api.openai.com": ["127.0.0.1"]}))


def test_teacher_address_with_a_base_url_checks_that_url() -> None:
    check_teacher_address("deployed", "http://vllm.internal:8000/v1", ["vllm.internal", "10.0.0.5"], resolve=resolver())
    with pytest.raises(HostRefused, match="resolves to 10.0.0.5, a private address; list that address"):
        check_teacher_address("openai", "http://vllm.internal:8000/v1", ["vllm.internal"], resolve=resolver())
    with pytest.raises(HostRefused, match="host 'evil.example' is not on"):
        check_teacher_address("openai", "https://evil.example/v1", DEFAULTS, resolve=resolver())


def test_deployed_teacher_without_an_address_is_refused() -> None:
    with pytest.raises(HostRefused, match="teacher_config.base_url: a deployed teacher needs a base URL"):
        check_teacher_address("deployed", "", DEFAULTS, resolve=resolver())


def test_allowed_hosts_setting_is_split_trimmed_and_lowercased() -> None:
    assert parse_allowed_hosts(" API.openai.com, ,vllm.internal:8000,,[::1]:8080 ") == [
        "api.openai.com", "vllm.internal:8000", "[::1]:8080"]
    assert parse_allowed_hosts("") == []
