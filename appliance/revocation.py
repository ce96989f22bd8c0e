"""Revocation for the targets: an OpenSSH KRL of the revoked serials.

The bastion checks revocations in the database itself; a target's sshd
cannot, so it reads a Key Revocation List from ``RevokedKeys``. The KRL
is written by OpenSSH's own ``ssh-keygen -k``, which lists each revoked
serial under the user CA's key: what sshd reads is what OpenSSH wrote.
An empty list is still a valid KRL, so a target can install it before
anything is revoked. Its version number is the number of revocations,
so a target can tell a newer list from an older one.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .errors import ConfigError, Unavailable
from .store import revocations

logger = logging.getLogger(__name__)


def read_revoked_serials(engine: Engine) -> list[int]:
    """Return every revoked serial, smallest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(revocations.c.serial).order_by(revocations.c.serial)
        ).all()

    return [int(row[0]) for row in rows]


def krl_spec(serials: list[int]) -> str:
    """The ``ssh-keygen -k`` specification that revokes ``serials``."""
    return "".join(f"serial: {serial}\n" for serial in serials)


def export_krl(engine: Engine, user_ca_public: Path) -> bytes:
    """Return a KRL revoking every revoked serial of the user CA."""
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise ConfigError(
            "ssh-keygen is not installed: install openssh-client to write KRLs"
        )
    serials = read_revoked_serials(engine)
    with tempfile.TemporaryDirectory(prefix="jit-krl-") as work:
        spec, out = Path(work) / "spec", Path(work) / "krl"
        spec.write_text(krl_spec(serials))
        argv = [keygen, "-q", "-k", "-f", str(out), "-s", str(user_ca_public)]
        argv += ["-z", str(len(serials)), str(spec)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise Unavailable(f"ssh-keygen could not write the KRL: {result.stderr}")
        data = out.read_bytes()
    logger.info("Wrote a KRL of %d revoked serials", len(serials))

    return data
