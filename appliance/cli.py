"""``jit-bastion``: the appliance's service and admin command.

Every command works on one state directory, named by ``--state`` or
``JIT_BASTION_STATE`` (default ``/var/lib/jit-bastion``). Errors print
one line per problem and exit non-zero; nothing prints a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, access, audit, identity, inventory, policy
from .config import load_config, parse_duration, parse_hostport, state_dir
from .errors import BastionError, ConfigError, InputError
from .secret import Secret
from .state import State, initialize

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return handler(args)
    except BastionError as exc:
        for line in str(exc).splitlines():
            print(f"jit-bastion: {line}", file=sys.stderr)
        return 2 if isinstance(exc, InputError | ConfigError) else 1


def configure_logging(verbose: bool) -> None:
    """Log to standard error; proxmoxer stays at WARNING (it logs bodies)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("proxmoxer").setLevel(logging.WARNING)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    """Describe every command and its options."""
    parser = argparse.ArgumentParser(
        prog="jit-bastion", description="Just-in-time SSH access for Proxmox VE."
    )
    parser.add_argument("--state", help="state directory (JIT_BASTION_STATE)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_init(commands)
    _add_user(commands)
    _add_target(commands)
    _add_cert(commands)
    _add_ca(commands)
    _add_serve(commands)
    _add_audit(commands)
    _add_proxmox(commands)
    firewall = commands.add_parser("firewall", help="the appliance's nftables")
    firewall_actions = firewall.add_subparsers(required=True, metavar="ACTION")
    show = firewall_actions.add_parser("show", help="print the ruleset")
    show.set_defaults(handler=cmd_firewall_show)
    check = commands.add_parser("check", help="validate config and state")
    check.set_defaults(handler=cmd_check)

    return parser


def _add_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser("init", help="create a new state directory")
    init.add_argument("--name", help="the bastion's DNS name")
    init.add_argument("--ssh-listen", metavar="HOST:PORT")
    init.add_argument("--web-listen", metavar="HOST:PORT")
    init.add_argument("--database-url", help="SQLAlchemy URL (default SQLite)")
    init.set_defaults(handler=cmd_init)


def _add_user(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    user = commands.add_parser("user", help="manage people").add_subparsers(
        required=True, metavar="ACTION"
    )
    add = user.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the admin role")
    add.add_argument("--groups", default="", help="comma-separated groups")
    add.set_defaults(handler=cmd_user_add)
    listing = user.add_parser("list", help="list users")
    listing.set_defaults(handler=cmd_user_list)
    for action, handler, text in (
        ("disable", cmd_user_disable, "stop a user logging in and asking"),
        ("enable", cmd_user_enable, "let a disabled user back in"),
        ("reset-totp", cmd_user_reset, "new invitation: set password and TOTP anew"),
        ("set-totp", cmd_user_set_totp, "activate a TOTP secret read from stdin"),
    ):
        sub = user.add_parser(action, help=text)
        sub.add_argument("name")
        sub.set_defaults(handler=handler)


def _add_target(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    target = commands.add_parser("target", help="manage static targets")
    actions = target.add_subparsers(required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register a static target")
    add.add_argument("name")
    add.add_argument("address", metavar="HOST[:PORT]")
    add.set_defaults(handler=cmd_target_add)
    targets = commands.add_parser(
        "targets",
        help="list static targets and Proxmox guests",
        description="List every target: name, kind, node, status, address. "
        "Exits 1 when Proxmox guests could not be listed.",
    )
    targets.add_argument("--json", action="store_true", help="a JSON array")
    targets.set_defaults(handler=cmd_targets)


def _add_cert(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cert = commands.add_parser("cert", help="issue and revoke certificates")
    actions = cert.add_subparsers(required=True, metavar="ACTION")
    issue = actions.add_parser("issue", help="issue a certificate (operator)")
    issue.add_argument("user")
    issue.add_argument("--public-key", required=True, type=Path, metavar="FILE")
    issue.add_argument("--target", required=True)
    issue.add_argument("--reason", required=True)
    issue.add_argument("--ttl", help="lifetime, e.g. 15m (default from config)")
    issue.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the certificate here (default: stdout)",
    )
    issue.set_defaults(handler=cmd_cert_issue)
    revoke = actions.add_parser("revoke", help="revoke a certificate by serial")
    revoke.add_argument("serial", type=int)
    revoke.add_argument("--reason", default="")
    revoke.set_defaults(handler=cmd_cert_revoke)


def _add_ca(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = commands.add_parser("ca", help="show the CA keys")
    actions = ca.add_subparsers(required=True, metavar="ACTION")
    user = actions.add_parser("show-user-key", help="line for TrustedUserCAKeys")
    user.set_defaults(handler=cmd_ca_show_user_key)
    host = actions.add_parser("show-host-key", help="line for known_hosts")
    host.set_defaults(handler=cmd_ca_show_host_key)
    krl = actions.add_parser("krl", help="KRL of revoked serials, for RevokedKeys")
    krl.add_argument("--out", type=Path, metavar="FILE", help="default: stdout")
    krl.set_defaults(handler=cmd_ca_krl)


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run a service")
    services = serve.add_subparsers(required=True, metavar="SERVICE")
    ssh = services.add_parser("ssh", help="run the SSH bastion")
    ssh.set_defaults(handler=cmd_serve_ssh)
    web = services.add_parser("web", help="run the web UI under gunicorn")
    web.set_defaults(handler=cmd_serve_web)


def _add_audit(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit_parser = commands.add_parser("audit", help="read the audit trail")
    actions = audit_parser.add_subparsers(required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check the hash chain")
    verify.add_argument(
        "--head", help="a head from the log ('seq=N hash=H'): must still be there"
    )
    verify.set_defaults(handler=cmd_audit_verify)
    show = actions.add_parser("show", help="list events, oldest first")
    show.add_argument("--since", help="2024-05-01, 2024-05-01T14:30Z or 2h (ago)")
    show.add_argument("--until", help="same forms as --since")
    show.add_argument("--user", help="the actor")
    show.add_argument("--target")
    show.add_argument("--kind", help="a kind (tunnel.closed) or family (tunnel)")
    show.add_argument("--limit", type=int, default=1000, help="newest N (1000)")
    show.add_argument("--json", action="store_true", help="one JSON event a line")
    show.set_defaults(handler=cmd_audit_show)


def _add_proxmox(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    proxmox = commands.add_parser("proxmox", help="the Proxmox VE link")
    actions = proxmox.add_subparsers(required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="reach the API; list the privileges the token lacks",
        description="Reach the Proxmox API with the configured token, print "
        "its version and the privileges the token needs; exit 1 when any "
        "is missing.",
    )
    check.set_defaults(handler=cmd_proxmox_check)


def open_state(args: argparse.Namespace) -> State:
    """Open the state directory the arguments name."""
    return State.open(state_dir(args.state))


def cmd_init(args: argparse.Namespace) -> int:
    """Create the state directory and print what to do next."""
    path = state_dir(args.state)
    state = initialize(
        path,
        name=args.name,
        ssh_listen=args.ssh_listen,
        web_listen=args.web_listen,
        database_url=args.database_url,
    )
    print(f"Initialised {path}")
    print(f"User CA: {state.ca.user_fingerprint}")
    print("Next: jit-bastion user add NAME; jit-bastion target add NAME HOST")

    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    """Create a user account."""
    state = open_state(args)
    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    role = "admin" if args.admin else "user"
    user = identity.add_user(state.engine, args.name, role=role, groups=groups)
    state.auditor.record("user.added", actor="cli", target=user.name, role=role)
    print(f"Added {role} {user.name}")
    print_invitation(state, user.name)

    return 0


def print_invitation(state: State, name: str) -> None:
    """Print a new one-time invitation link for ``name``."""
    link = identity.invitation_link(state.config, identity.invite(state, name))
    hours = state.config.web.invitation_ttl // 3600
    print(f"Invitation for {name} (one use, expires in {hours} h):\n{link}")


def cmd_user_disable(args: argparse.Namespace) -> int:
    """Disable an account: no logins, no certificates."""
    return _set_disabled(args, True)


def cmd_user_enable(args: argparse.Namespace) -> int:
    """Enable a disabled account."""
    return _set_disabled(args, False)


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    """Disable or enable the named account and audit it."""
    state = open_state(args)
    identity.set_disabled(state.engine, args.name, disabled)
    word = "disabled" if disabled else "enabled"
    state.auditor.record(f"user.{word}", actor="cli", target=args.name)
    print(f"{word.capitalize()} {args.name}")

    return 0


def cmd_user_reset(args: argparse.Namespace) -> int:
    """End a person's password and TOTP; print a new invitation."""
    print_invitation(open_state(args), args.name)
    return 0


def cmd_user_set_totp(args: argparse.Namespace) -> int:
    """Activate a TOTP secret typed or piped in (spaces and case are fine)."""
    import getpass

    state = open_state(args)
    prompt = f"TOTP secret for {args.name} (base32): "
    text = getpass.getpass(prompt) if sys.stdin.isatty() else sys.stdin.readline()
    identity.set_totp_secret(
        state, args.name, identity.import_totp_secret(Secret(text))
    )
    print(f"TOTP is active for {args.name}")

    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    """Print every user with role, groups and whether disabled."""
    state = open_state(args)
    for user in identity.list_users(state.engine):
        flags = " (disabled)" if user.disabled else ""
        print(f"{user.name}\t{user.role}\t{','.join(user.groups)}{flags}")

    return 0


def cmd_target_add(args: argparse.Namespace) -> int:
    """Register a static target at HOST[:PORT]."""
    state = open_state(args)
    try:
        host, port = parse_hostport(args.address, 22)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    target = inventory.add_static_target(state.engine, args.name, host, port)
    state.auditor.record(
        "target.added", actor="cli", target=target.name, address=f"{host}:{port}"
    )
    print(f"Added target {target.name} at {host}:{port}")

    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    """List the targets: name, kind, node, status, address."""
    listing = inventory.list_targets(open_state(args), addresses=True)
    rows = [
        {
            "name": t.name,
            "kind": t.kind,
            "node": t.node or "-",
            "vmid": t.vmid,
            "status": t.status if t.available else f"{t.status} (node offline)",
            "address": f"{t.host}:{t.port}" if t.host else "-",
        }
        for t in listing
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print("\t".join(str(v) for k, v in row.items() if k != "vmid"))
    if listing.problem:
        print(f"jit-bastion: {listing.problem}", file=sys.stderr)

    return 1 if listing.problem else 0


def cmd_proxmox_check(args: argparse.Namespace) -> int:
    """Reach the API; print its version and the privileges the token lacks."""
    from .proxmox import ProxmoxClient, run_sync

    state = open_state(args)
    client = ProxmoxClient.from_config(state.config.proxmox)
    try:
        report = run_sync(client.check())
    finally:
        client.close()
    print(f"Proxmox VE {report.version} at {client.url}, token {client.token}")
    for privilege in report.needed:
        print(f"{privilege}\t{'missing' if privilege in report.missing else 'ok'}")
    if report.missing:
        print(
            f"jit-bastion: the token lacks {', '.join(report.missing)}: "
            "grant them with scripts/pve-create-token.sh",
            file=sys.stderr,
        )

    return 1 if report.missing else 0


def cmd_cert_issue(args: argparse.Namespace) -> int:
    """Issue a certificate as the operator: recorded like any other."""
    state = open_state(args)
    try:
        public_key = args.public_key.read_text()
    except OSError as exc:
        raise InputError(f"cannot read {args.public_key}: {exc.strerror}") from None
    issued = access.issue_certificate(
        state,
        user=args.user,
        target=args.target,
        reason=args.reason,
        public_key=public_key,
        ttl=args.ttl,
        source="local",
        via="cli",
    )
    if args.out:
        args.out.write_text(issued.certificate + "\n")
        print(
            f"Wrote {args.out}: serial {issued.serial}, valid until "
            f"{issued.valid_before:%Y-%m-%d %H:%M:%S %Z}",
            file=sys.stderr,
        )
    else:
        print(issued.certificate)

    return 0


def cmd_cert_revoke(args: argparse.Namespace) -> int:
    """Revoke a certificate; the bastion closes its tunnels."""
    state = open_state(args)
    access.revoke(state, args.serial, by="cli", reason=args.reason)
    print(f"Revoked {args.serial}")

    return 0


def cmd_ca_show_user_key(args: argparse.Namespace) -> int:
    """Print the user CA line for a target's TrustedUserCAKeys."""
    print(open_state(args).ca.user_public_line())
    return 0


def cmd_ca_show_host_key(args: argparse.Namespace) -> int:
    """Print the @cert-authority line for a client's known_hosts."""
    state = open_state(args)
    print(state.ca.known_hosts_line(state.host_names()))
    return 0


def cmd_ca_krl(args: argparse.Namespace) -> int:
    """Write the KRL of revoked serials for the targets' RevokedKeys."""
    from .revocation import export_krl

    state = open_state(args)
    data = export_krl(state.engine, state.path / "ca" / "user_ca.pub")
    if args.out:
        args.out.write_bytes(data)
        print(f"Wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)

    return 0


def cmd_serve_ssh(args: argparse.Namespace) -> int:
    """Run the SSH bastion until SIGTERM."""
    from .bastion import Bastion

    state = open_state(args)
    asyncio.run(Bastion(state).serve_forever())

    return 0


def cmd_serve_web(args: argparse.Namespace) -> int:
    """Run the web UI until SIGTERM."""
    from webui.server import serve

    serve(state_dir(args.state))

    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the audit chain; report the first broken event."""
    state = open_state(args)
    head = audit.parse_head(args.head) if args.head else None
    count, problem = audit.verify_chain(state.engine, head=head)
    if problem:
        print(f"audit chain broken at event {problem.seq}: {problem.message}")
        print(f"({count} events before it verified)")
        return 1
    print(f"audit chain verified: {count} events")

    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    """Print matching events as a table or as JSON lines."""
    where = audit.EventFilter(
        kind=args.kind,
        since=audit.parse_moment(args.since) if args.since else None,
        until=audit.parse_moment(args.until) if args.until else None,
        user=args.user,
        target=args.target,
    )
    state = open_state(args)
    events = audit.read_events(
        state.engine, where=where, limit=args.limit, oldest_first=True
    )
    if args.json:
        for event in events:
            print(audit.canonical(event))
    else:
        print("\n".join(audit.format_table(events)))

    return 0


def cmd_firewall_show(args: argparse.Namespace) -> int:
    """Print the nftables ruleset made from the config."""
    from .firewall import generate_ruleset

    print(generate_ruleset(load_config(state_dir(args.state))), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Validate config and state; print one line per problem."""
    path = state_dir(args.state)
    problems = check_state(path)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{path}: OK")

    return 1 if problems else 0


def check_state(path: Path) -> list[str]:
    """Return every problem with a state directory, one line each."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return str(exc).splitlines()
    problems = policy.check_rules(config.policy)
    try:
        state = State.open(path)
        state.ca.user_public_line()
        from . import store

        if store.current_revision(state.engine) is None:
            problems.append("the database has no schema: run init")
    except BastionError as exc:
        problems.extend(str(exc).splitlines())
    if config.certificates.max_ttl < parse_duration("1m"):
        problems.append("certificates.max_ttl is shorter than a minute")

    return problems


if __name__ == "__main__":
    sys.exit(main())
