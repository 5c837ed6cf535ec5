"""Secrets at rest (API keys of managed servers, teacher keys): Fernet tokens under keys that come
from the environment (`NEXUS_SECRET_KEYS`), apart from SECRET_KEY.

Rotation: put a new key first in NEXUS_SECRET_KEYS and keep the old ones after it (every key
decrypts, the first encrypts), run `manage.py nexus_rotate_secrets` to re-encrypt every stored
secret under the first key, then drop the old keys. Without NEXUS_SECRET_KEYS a development or
test machine keeps a generated key in NEXUS_DATA_DIR/secret-keys (mode 0600); production refuses
to start without it."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _generated_key_file() -> list[bytes]:
    path = Path(settings.NEXUS_DATA_DIR) / "secret-keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".secret-keys-{os.getpid()}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
        try:
            os.link(partial, path)  # the first process to get there wins; the others read its key
        except FileExistsError:
            pass
        finally:
            partial.unlink(missing_ok=True)
    return [line.strip() for line in path.read_bytes().splitlines() if line.strip()]


@functools.lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    raw = [k.encode() for k in keys] or _generated_key_file()
    try:
        return MultiFernet([Fernet(k) for k in raw])
    except ValueError as exc:
        raise ImproperlyConfigured("NEXUS_SECRET_KEYS must hold Fernet keys (32 url-safe base64 bytes each; make one "
                                   "with `python -c 'from cryptography.fernet import Fernet; "
                                   "print(Fernet.generate_key().decode())'`)") from exc


def _box() -> MultiFernet:
    return _fernet(tuple(settings.NEXUS_SECRET_KEYS))


def secret_encrypt(plain: str) -> str:
    return _box().encrypt(plain.encode()).decode() if plain else ""


def secret_decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _box().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured("A stored secret cannot be decrypted with NEXUS_SECRET_KEYS: a key it was "
                                   "encrypted with is missing (keep old keys after the new one while rotating)") from exc


def secret_rotate(token: str) -> str:
    """The same secret encrypted under the first key."""
    return _box().rotate(token.encode()).decode() if token else ""


# Every model field that holds a secret_encrypt() token, for rotation ("app_label.Model", field).
ENCRYPTED_FIELDS = [("deployments_app.DeploymentArm", "api_key_encrypted"),
                    ("datasets_app.TeacherConnection", "api_key_encrypted"),
                    ("datasets_app.DistillationTeacher", "api_key_encrypted")]


def secrets_rotate_all() -> int:
    """Re-encrypt every stored secret under the first key of NEXUS_SECRET_KEYS; returns how many."""
    from django.apps import apps
    from django.db import transaction

    done = 0
    for label, field in ENCRYPTED_FIELDS:
        model = apps.get_model(label)
        with transaction.atomic():
            for pk, token in model.objects.exclude(**{field: ""}).select_for_update().values_list("pk", field):
                model.objects.filter(pk=pk).update(**{field: secret_rotate(token)})
                done += 1
    return done
