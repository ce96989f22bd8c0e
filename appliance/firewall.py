"""The appliance's own firewall, as an nftables ruleset made from config.

Only the people's networks reach the bastion and the web UI, and the
appliance reaches out only to the target networks, the Proxmox API, its
log sinks, DNS and NTP. ``jit-bastion firewall show`` prints the ruleset;
the LXC and VM images load it at boot. Names in URLs are resolved when
the ruleset is made, so a change of address needs a reload.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from .config import Config, parse_hostport

TABLE = "jit_bastion"


def _split(networks: Iterable[str]) -> tuple[list[str], list[str]]:
    """Sort networks into IPv4 and IPv6, normalised."""
    v4: list[str] = []
    v6: list[str] = []
    for text in networks:
        network = ipaddress.ip_network(text, strict=False)
        (v4 if network.version == 4 else v6).append(str(network))

    return v4, v6


def _resolve(host: str) -> list[str]:
    """The addresses of ``host``; an address stays itself."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []

    return sorted({str(info[4][0]) for info in infos})


def _endpoints(config: Config) -> list[tuple[str, int, str]]:
    """Outbound (address, port, protocol) the appliance needs besides targets."""
    wanted: list[tuple[str, int, str]] = []
    if config.proxmox.url:
        url = urlsplit(config.proxmox.url)
        for address in _resolve(url.hostname or ""):
            wanted.append((address, url.port or 8006, "tcp"))
    if config.audit.syslog.startswith(("udp://", "tcp://")):
        url = urlsplit(config.audit.syslog)
        for address in _resolve(url.hostname or ""):
            wanted.append((address, url.port or 514, url.scheme))

    return wanted


def _accept_from(family: str, networks: list[str], ports: str) -> list[str]:
    """Input rules letting ``networks`` of one family reach ``ports``."""
    if not networks:
        return []
    return [f"{family} saddr {{ {', '.join(networks)} }} tcp dport {ports} accept"]


def _accept_to(family: str, networks: list[str], ports: str) -> list[str]:
    """Output rules letting tunnels reach ``networks`` of one family."""
    if not networks:
        return []
    return [f"{family} daddr {{ {', '.join(networks)} }} tcp dport {ports} accept"]


def _input_rules(config: Config) -> list[str]:
    """What may come in: the people's networks to the two ports."""
    ssh_port = parse_hostport(config.ssh.listen, 2222)[1]
    web_port = parse_hostport(config.web.listen, 8443)[1]
    ports = f"{{ {ssh_port}, {web_port} }}"
    v4, v6 = _split(config.network.client_networks)
    if not v4 and not v6:
        return [f"tcp dport {ports} accept"]

    return _accept_from("ip", v4, ports) + _accept_from("ip6", v6, ports)


def _output_rules(config: Config) -> list[str]:
    """What may go out: tunnels to targets, the API, sinks, DNS, NTP."""
    ports = ", ".join(str(p) for p in sorted({22, *config.ssh.allowed_ports}))
    networks = (*config.network.target_networks, *config.proxmox.target_networks)
    v4, v6 = _split(networks)
    rules = ["udp dport { 53, 123 } accept", "tcp dport 53 accept"]
    if not v4 and not v6:
        rules.append(f"tcp dport {{ {ports} }} accept")
    rules += _accept_to("ip", v4, f"{{ {ports} }}")
    rules += _accept_to("ip6", v6, f"{{ {ports} }}")
    for address, port, protocol in _endpoints(config):
        family = "ip6" if ":" in address else "ip"
        rules.append(f"{family} daddr {address} {protocol} dport {port} accept")

    return rules


def generate_ruleset(config: Config) -> str:
    """Return the whole nftables ruleset for ``config``."""
    common = [
        "ct state established,related accept",
        "ct state invalid drop",
        "meta l4proto { icmp, ipv6-icmp } accept",
    ]
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    lines += [f"table inet {TABLE} {{", "    chain input {"]
    lines.append("        type filter hook input priority 0; policy drop;")
    lines += [f"        {rule}" for rule in ["iif lo accept", *common]]
    lines += [f"        {rule}" for rule in _input_rules(config)]
    lines += ["    }", "    chain output {"]
    lines.append("        type filter hook output priority 0; policy drop;")
    lines += [f"        {rule}" for rule in ["oif lo accept", *common]]
    lines += [f"        {rule}" for rule in _output_rules(config)]
    lines += ["    }", "}"]

    return "\n".join(lines) + "\n"
