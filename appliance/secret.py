"""A string that never shows itself in a log, a traceback or a repr."""

from __future__ import annotations


class Secret:
    """Holds a password, TOTP secret or API token.

    ``str()`` and ``repr()`` print a placeholder; only :meth:`reveal`
    gives the value, so every use of the real value is greppable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value itself."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__
