"""How to connect with an issued certificate: files, config and command.

The same words go to the result page and to the API, so a person with a
browser and OpenSSH and the ``jit`` command end up with the same setup.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.client import Route, render_ssh_config
from appliance.config import parse_hostport
from appliance.state import State

from .grants import Record

#: The usual private key file for each certificate type.
_DEFAULT_KEYS = {
    "ssh-ed25519-cert-v01@openssh.com": "~/.ssh/id_ed25519",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com": "~/.ssh/id_ecdsa",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com": "~/.ssh/id_ecdsa",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com": "~/.ssh/id_ecdsa",
    "ssh-rsa-cert-v01@openssh.com": "~/.ssh/id_rsa",
}


@dataclass(frozen=True)
class Instructions:
    """Everything a person needs to use one certificate."""

    route: Route
    certificate_name: str
    certificate_file: str
    config_file: str
    ssh_config: str
    known_hosts: str
    command: str


def route_for(state: State, record: Record) -> Route:
    """The way from a laptop through this bastion to the record's target."""
    name = state.config.appliance.name
    _, port = parse_hostport(state.config.ssh.listen, 2222)

    return Route(
        bastion_host=name,
        bastion_port=port,
        host_key_alias=name,
        user=record.user,
        target=record.target,
        login=record.login,
    )


def instructions(state: State, record: Record) -> Instructions:
    """Files to save, the ssh_config block, known_hosts line and command."""
    route = route_for(state, record)
    name = f"{record.user}-{record.target}-cert.pub"
    certificate_file = f"~/.ssh/jit/{name}"
    config_file = f"~/.ssh/jit/{record.target}.conf"
    key_type = record.certificate.split(" ", 1)[0]
    identity_file = _DEFAULT_KEYS.get(key_type, "~/.ssh/id_ed25519")

    return Instructions(
        route=route,
        certificate_name=name,
        certificate_file=certificate_file,
        config_file=config_file,
        ssh_config=render_ssh_config(route, identity_file, certificate_file),
        known_hosts=state.ca.known_hosts_line(state.host_names()),
        command=f"ssh -F {config_file} {record.target}",
    )
