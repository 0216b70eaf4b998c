"""Permissions: who may write what to a tree, read from its settings document.

A tree's settings document has an ``auth`` map from public key (or ``*`` for anyone)
to a permission name. ``admin`` implies ``write`` implies ``read``. Writing data needs
``write``; changing settings needs ``admin``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from eidetica.errors import InvalidPermission, PermissionDenied
from eidetica.protocol.keys import check_public_key

ANYONE = "*"
"""The auth map key that applies to every key without an entry of its own."""


class Permission(enum.IntEnum):
    """Ordered so that a higher permission includes every lower one."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        """The name written in settings documents."""
        return self.name.lower()


def parse_permission(name: object) -> Permission:
    """The permission called ``name``, or :class:`InvalidPermission`."""
    if isinstance(name, str) and name in _BY_LABEL:
        return _BY_LABEL[name]
    raise InvalidPermission(f"unknown permission {name!r}: use 'read', 'write' or 'admin'")


_BY_LABEL = {permission.label: permission for permission in Permission}


def check_auth_map(settings: Mapping[str, Any]) -> None:
    """Raise unless the settings' ``auth`` map names only valid keys and permissions."""
    auth = settings.get("auth", {})
    if not isinstance(auth, Mapping):
        raise InvalidPermission("settings 'auth' must be a map of key to permission")
    for key, name in auth.items():
        if key != ANYONE:
            check_public_key(key)
        parse_permission(name)


def permission_of(settings: Mapping[str, Any], key: str) -> Permission | None:
    """The strongest permission ``key`` holds, directly or through ``*``."""
    auth = settings.get("auth")
    if not isinstance(auth, Mapping):
        return None
    held = (auth.get(key), auth.get(ANYONE))
    return max((_BY_LABEL[v] for v in held if isinstance(v, str) and v in _BY_LABEL), default=None)


def granted(settings: Mapping[str, Any], key: str) -> Permission | None:
    """The permission ``settings`` grant ``key`` by name (not through ``*``)."""
    auth = settings.get("auth")
    label = auth.get(key) if isinstance(auth, Mapping) else None
    return _BY_LABEL.get(label) if isinstance(label, str) else None


def check_write(settings: Mapping[str, Any], author: str, *, changes_settings: bool) -> None:
    """Raise :class:`PermissionDenied` unless ``author`` may make this write."""
    needed = Permission.ADMIN if changes_settings else Permission.WRITE
    held = permission_of(settings, author)
    if held is None or held < needed:
        what = "change settings" if changes_settings else "write"
        has = held.label if held else "no permission"
        raise PermissionDenied(f"{author} may not {what}: needs {needed.label}, has {has}")
