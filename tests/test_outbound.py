"""The outbound URL policy on its own: syntax, allow rules, refused addresses, resolution.

Every host used here is refused before resolution or resolves locally (``localhost``);
the only connections made go to a loopback server this file starts."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from packer.outbound import (DEFAULT_DENY_HOSTS, DEFAULT_DENY_NETWORKS, Denylist, OutboundRefused, Rule,
                             check_target, guarded_session, parse_rules, parse_target, refusal_of, refused_cause)
from packer.settings import ServicePluginConfig, WebhooksConfig

DEFAULT = Denylist(DEFAULT_DENY_NETWORKS, DEFAULT_DENY_HOSTS)
LOOPBACK_DENIED = Denylist([*DEFAULT_DENY_NETWORKS, "127.0.0.0/8", "::1/128"], DEFAULT_DENY_HOSTS)


@pytest.mark.parametrize("url,reason", [
    ("http://127.0.0.1:8080/api%2f..%2fadmin", "encoded '/'"),
    ("http://127.0.0.1:8080/api%2F..%2Fadmin", "encoded '/'"),
    ("http://127.0.0.1:8080/api%5c..%5cadmin", "encoded '\\'"),
    ("http://127.0.0.1:8080/api/%252e%252e/admin", "encoded '%'"),
    ("http://127.0.0.1:8080/api/../admin", "dot segment"),
    ("http://127.0.0.1:8080/api/./x", "dot segment"),
    ("http://127.0.0.1:8080/api/%2e%2e/admin", "dot segment"),
    ("http://127.0.0.1:8080/api/.%2E/admin", "dot segment"),
    ("http://127.0.0.1:8080/api/..;x=1/admin", "dot segment"),
    ("http://127.0.0.1:8080/api/..", "dot segment"),
    ("http://127.0.0.1:8080\\@evil/x", "backslash"),
    ("http://127.0.0.1:8080/a\\..\\b", "backslash"),
    ("http://user:pw@127.0.0.1:8080/x", "credentials"),
    ("http://127.0.0.1:8080@evil/x", "credentials"),
    ("http://127.0.0.1:8080/x#frag", "fragment"),
    ("ftp://127.0.0.1/x", "http:// or https://"),
    ("http:///x", "no host"),
    ("http://127.0.0.1:99999/x", "not a URL"),
    ("http://127.0.0.1/a b", "printable ASCII"),
    ("http://bücher.example/x", "printable ASCII"),
    ("http://2130706433/", "not a canonical IPv4"),
    ("http://0x7f.1/", "not a canonical IPv4"),
    ("http://127.1/", "not a canonical IPv4"),
    ("http://0177.0.0.1/", "not a canonical IPv4"),
])
def test_urls_a_decoding_upstream_could_reroute_are_refused(url, reason):
    with pytest.raises(OutboundRefused) as info:
        parse_target(url)
    assert reason in info.value.reason


def test_a_target_is_sent_exactly_as_checked():
    target = parse_target("http://LocalHost.:8080/api/v1/x%20y?q=a%2fb")
    assert (target.host, target.port, target.segments) == ("localhost", 8080, ("api", "v1", "x y"))
    assert target.url.raw_path == "/api/v1/x%20y" and target.url.raw_query_string == "q=a%2fb"


@pytest.mark.parametrize("url,allowed", [
    ("http://127.0.0.1:8080/transform", True),
    ("http://127.0.0.1:8080/transform/x", True),
    ("http://127.0.0.1:8080/transformer", False),
    ("http://127.0.0.1:8080/api", True),
    ("http://127.0.0.1:8080/api/v1/x", True),
    ("http://127.0.0.1:8080/%61pi/x", True),  # the decoded path is what counts
    ("http://127.0.0.1:8080/apix", False),
    ("http://127.0.0.1:8081/api/x", False),
    ("https://127.0.0.1:8080/api/x", False),
    ("http://localhost:8080/api/x", False),
    ("http://hooks.corp/anything", False),
    ("https://hooks.corp/anything", True),
    ("https://a.b.corp:8443/anything", True),
    ("https://corp/anything", False),
    ("https://evilcorp/anything", False),
])
def test_allow_rules_compare_scheme_host_port_and_path_segments(url, allowed):
    rules = parse_rules(["http://127.0.0.1:8080/transform", "http://127.0.0.1:8080/api/", "https://hooks.corp",
                         "https://*.corp:*/"])
    target = parse_target(url)
    assert any(rule.covers(target) for rule in rules) is allowed


@pytest.mark.parametrize("rule", ["http://h/a/../b", "http://h/a%2fb/", "http://h/x?q", "ftp://h/", "http://*/",
                                  "http://a.*.corp/", "http://h:*x/"])
def test_bad_allow_rules_fail_the_config(rule):
    with pytest.raises(ValueError):
        Rule.parse(rule)
    with pytest.raises(ValueError, match="allow"):
        WebhooksConfig(allow=[rule])
    with pytest.raises(ValueError):
        ServicePluginConfig(allow=[rule])


@pytest.mark.parametrize("url,reason", [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is in refused network 169.254.0.0/16"),
    ("http://169.254.170.2/v2/credentials", "refused network 169.254.0.0/16"),
    ("http://[fe80::1]/x", "refused network fe80::/10"),
    ("http://[fd00:ec2::254]/latest/", "refused network fd00:ec2::254/128"),
    ("http://[::ffff:169.254.169.254]/x", "refused network 169.254.0.0/16"),
    ("http://[64:ff9b::a9fe:a9fe]/x", "refused network 169.254.0.0/16"),
    ("http://100.100.100.200/latest/meta-data/", "refused network 100.100.100.200/32"),
    ("http://0.0.0.0:8080/x", "refused network 0.0.0.0/8"),
    ("http://metadata.google.internal/computeMetadata/v1/", "'metadata.google.internal' is a refused name"),
    ("http://METADATA.google.internal./x", "'metadata.google.internal' is a refused name"),
    ("http://metadata/x", "refused name"),
])
def test_metadata_and_link_local_are_refused_even_when_allowed(url, reason):
    # An allow-list naming them does not help: refusals win, before any resolution.
    rules = parse_rules(["http://169.254.169.254/", "http://169.254.170.2/", "http://[fe80::1]/",
                         "http://[fd00:ec2::254]/", "http://[::ffff:169.254.169.254]/", "http://[64:ff9b::a9fe:a9fe]/",
                         "http://100.100.100.200/", "http://0.0.0.0:8080/", "http://metadata.google.internal/",
                         "http://metadata/"])
    assert reason in (refusal_of(parse_target(url), rules, DEFAULT, "allow") or "")


async def test_host_names_are_resolved_at_creation():
    rules = parse_rules(["http://localhost:*/"])
    target = parse_target("http://localhost:1/hook")
    await check_target(target, rules, DEFAULT, "allow")  # loopback is not refused by default
    with pytest.raises(OutboundRefused, match=r"host 'localhost' resolves to (127\.0\.0\.1|::1) is in refused network"):
        await check_target(target, rules, LOOPBACK_DENIED, "allow")


@pytest.fixture
async def loopback(aiohttp_server):
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return server.port, hits


async def test_the_connection_resolver_refuses_what_resolves_to_a_refused_address(loopback):
    port, hits = loopback
    async with guarded_session(DEFAULT) as http:
        async with http.get(f"http://localhost:{port}/fine") as resp:
            assert resp.status == 200
    # The same name, once its address is refused (a rebinding answer or a changed config):
    # refused by the resolver the connector uses, so no connection is opened.
    async with guarded_session(LOOPBACK_DENIED) as http:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await http.get(f"http://localhost:{port}/refused")
    refused = refused_cause(info.value)
    assert refused is not None and "resolves to" in refused.reason
    assert hits == ["/fine"]
