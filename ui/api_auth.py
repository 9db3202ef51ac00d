"""Who may use the remote API (/api/v1, docs/remote-api.md): a bearer token, or the --auth user:password pairs.

The token is required even on 127.0.0.1: the Host/Origin guard keeps other web pages out, and the token keeps
out anything that is not a script its owner gave it to. It is a random secret written on first start to
`<home>/.api-token` (0600; Gradio is told never to serve it), unless ADAPTOR_STUDIO_TOKEN or --api-token-file
gives one. 401s never ask for Basic credentials (no `WWW-Authenticate: Basic`), so a browser never prompts
for them, never caches them and so can never send them on a web page's behalf.
"""
from __future__ import annotations

import base64
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "ADAPTOR_STUDIO_TOKEN"
TOKEN_FILE = ".api-token"
MIN_TOKEN_CHARS = 16  # a given token shorter than this is refused: it could be guessed


class TokenError(ValueError):
    """A token from the environment or a file that cannot be used; the message says which and why."""


def _checked(token: str, where: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise TokenError(f"the API token in {where} must be at least {MIN_TOKEN_CHARS} characters without spaces "
                         f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def token_files(home: Path, token_file: str | None = None) -> list[Path]:
    """Files that hold (or may come to hold) a token: never served by Gradio's file route."""
    return [Path(os.path.abspath(p)) for p in (home / TOKEN_FILE, token_file) if p]


def load_token(home: Path, token_file: str | None = None) -> tuple[str, str]:
    """(token, where it came from): $ADAPTOR_STUDIO_TOKEN, else token_file, else <home>/.api-token, created
    (0600, never replaced) on first start."""
    if os.environ.get(TOKEN_ENV):
        return _checked(os.environ[TOKEN_ENV], f"${TOKEN_ENV}"), f"${TOKEN_ENV}"
    path = Path(os.path.abspath(token_file)) if token_file else home / TOKEN_FILE
    if token_file or path.exists():
        try:
            return _checked(path.read_text(encoding="utf-8"), str(path)), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise TokenError(f"cannot read the API token file {path}: {e}") from None
    token = secrets.token_urlsafe(32)
    try:  # O_EXCL: two studios starting at once never write over each other's token
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_token(home, token_file)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token, str(path)


@dataclass(frozen=True)
class ApiAuth:
    token: str
    users: tuple[tuple[str, str], ...] = ()  # --auth pairs, accepted as HTTP Basic too

    def allows(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            return hmac.compare_digest(value.encode(), self.token.encode())
        if scheme.lower() == "basic" and value and self.users:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            # every pair compared, so the time taken does not tell which user names exist
            ok = [hmac.compare_digest(user.encode(), u.encode()) & hmac.compare_digest(password.encode(), p.encode())
                  for u, p in self.users]
            return any(ok)
        return False
