"""The device key: made on a node's first open, kept private, reused ever after."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from eidetica.errors import StorageError
from eidetica.protocol.keys import SEED_BYTES, SigningKey

log = logging.getLogger(__name__)

KEY_FILE = "device.key"


def load_or_create_device_key(
    directory: Path, *, new_key: Callable[[], SigningKey] = SigningKey.generate
) -> SigningKey:
    """The key in ``directory/device.key``, created there (mode 0600) by ``new_key``
    if absent."""
    path = directory / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _load(path)
    key = new_key()
    with os.fdopen(fd, "w") as handle:
        handle.write(key.seed.hex() + "\n")
    return key


def _load(path: Path) -> SigningKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("device key %s had mode %o; tightening it to 600", path, mode)
        path.chmod(0o600)
    text = path.read_text().strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError as exc:
        raise StorageError(f"device key {path} is not hex") from exc
    if len(seed) != SEED_BYTES:
        raise StorageError(f"device key {path} must hold {SEED_BYTES} bytes")
    return SigningKey(seed)
