"""The benchmark: jit-bastion against an OpenSSH sshd used as a jump host.

Run it with ``scripts/bench`` (see :mod:`tests.bench.__main__`); the
test suite runs ``scripts/bench --smoke`` through ``test_bench_smoke``.
"""
