"""The web UI: enrollment, login, access requests, admin pages and the API.

:func:`create_app` builds the Flask app for one opened state directory;
``jit-bastion serve web`` runs it under gunicorn (see :mod:`.server`).
"""

from .app import create_app

__all__ = ["create_app"]
