"""Fixtures that start real parts: namespaces, sshd targets, the bastion."""

from __future__ import annotations

import getpass
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.identity import add_user
from appliance.inventory import add_static_target
from tests.harness import ApplianceUnderTest, Client, SSHDTarget
from tests.netlab import IS_ROOT, Network, remove_stale_namespaces

POSTGRES_ADMIN = os.environ.get(
    "JIT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def network() -> Iterator[Network]:
    """Hosts in network namespaces (as root) or on loopback."""
    remove_stale_namespaces()
    net = Network()
    yield net
    net.close()


@pytest.fixture(scope="session")
def person() -> str:
    """The login of the person under test; a real account on the targets."""
    if not IS_ROOT:
        return getpass.getuser()
    for name in ("alice", "bob"):
        if subprocess.run(["id", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
        # sshd without PAM refuses a locked account; '*' is unlocked, no password.
        subprocess.run(["usermod", "-p", "*", name], check=True)
    return "alice"


def _postgres(statement: str) -> None:
    """Run one statement as the PostgreSQL admin, outside a transaction."""
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(statement))
    except sa.exc.OperationalError as exc:
        # CI always has the server; elsewhere, say what is missing and skip.
        problem = (
            f"PostgreSQL at {POSTGRES_ADMIN} is not reachable (set "
            f"JIT_TEST_POSTGRES to a superuser URL): {exc}"
        )
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each store test runs on SQLite (None: the default) and PostgreSQL,
    in a database of its own that is dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    name = f"jb_{uuid.uuid4().hex[:12]}"
    _postgres(f'CREATE DATABASE "{name}"')
    # Through the socket: a bastion in a namespace has a loopback of its own.
    yield f"postgresql+psycopg://postgres@/{name}?host=/var/run/postgresql"
    _postgres(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def appliance(
    request: pytest.FixtureRequest, network: Network, tmp_path: Path
) -> Iterator[ApplianceUnderTest]:
    """An initialised appliance whose bastion is not started yet.

    A test that also asks for ``database_url`` gets its store there.
    """
    url = None
    if "database_url" in request.fixturenames:
        url = request.getfixturevalue("database_url")
    under_test = ApplianceUnderTest(
        network.host("bastion"), tmp_path / "appliance", database_url=url
    )
    under_test.directory.mkdir()
    yield under_test.init()
    under_test.close()


@pytest.fixture
def target(
    network: Network, appliance: ApplianceUnderTest, tmp_path: Path, person: str
) -> Iterator[SSHDTarget]:
    """A real sshd called web01 that trusts the appliance's user CA."""
    host = network.host("web01")
    sshd = SSHDTarget("web01", host, tmp_path / "web01", appliance.user_ca_file())
    sshd.port = host.free_port(22)
    sshd.start()
    add_static_target(appliance.state.engine, "web01", host.address, sshd.port)
    yield sshd
    sshd.stop()


@pytest.fixture
def client(network: Network, tmp_path: Path, person: str) -> Client:
    """OpenSSH's ssh in a host of its own."""
    directory = tmp_path / "client"
    directory.mkdir()
    return Client(network.host("client"), directory, person)


@pytest.fixture
def alice(appliance: ApplianceUnderTest, person: str) -> str:
    """The person, as a user of the appliance."""
    add_user(appliance.state.engine, person)
    return person
