"""What counts as a secret, and how it is hidden: the one rule for MLflow params and tags, printed
job entrypoints and environments, and log lines.

A name is secret when it reads like a credential (`MLFLOW_TRACKING_PASSWORD`, `WANDB_API_KEY`,
`DB_PASS`, `GITHUB_PAT`, `aws_session_token`); its value is shown as `***`. Any other value is
shown with the credentials inside it masked: `user:password@` in URIs, `NAME=value` pairs and
`--name value` options whose name is secret, and `Bearer` tokens. Called `redaction`, not
`secrets`, so it never shadows the standard library's `secrets` module.
"""

from __future__ import annotations

import re

REDACTED = "***"

# Substrings that make a name secret wherever they appear (also glued: dbpassword, apikey).
SECRET_PARTS = ("token", "passw", "secret", "credential", "apikey", "accesskey", "privatekey", "signature",
                "authorization", "cookie")
# Whole words that make a name secret (as substrings they would catch data.path, optim.patience).
SECRET_WORDS = frozenset({"pass", "pwd", "pat", "sas"})
# A last word that makes a name secret: SIGNING_KEY, STRIPE_KEY, SSH_KEY.
SECRET_LAST_WORDS = frozenset({"key"})

_URI = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<rest>[^\s'\"]+)")
_PAIR = re.compile(r"(?<![\w.-])(?P<name>-{0,2}[A-Za-z_][\w.-]*)=(?P<value>'[^']*'|\"[^\"]*\"|[^\s&'\"]*)")
_OPTION = re.compile(r"(?<![\w-])(?P<name>--[A-Za-z][\w.-]*)(?P<sep>\s+)"
                     r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s'\"-][^\s'\"]*)")
_BEARER = re.compile(r"(?P<scheme>\bBearer\s+)[^\s'\",]+", re.IGNORECASE)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)  # camelCase -> camel Case
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def is_secret(name: str) -> bool:
    """Whether a variable, param, tag or option name names a credential."""
    words = _words(name)
    glued = "".join(words)
    return (any(part in glued for part in SECRET_PARTS) or any(w in SECRET_WORDS for w in words)
            or (len(words) > 1 and words[-1] in SECRET_LAST_WORDS))


def carries_credentials(uri: str) -> bool:
    """Whether a URI holds userinfo (`user@`, `user:password@`), the password possibly holding `/`,
    `@` or `:` (about half of AWS secret keys hold a `/`, which ends a URI's authority for urlsplit).
    `host:port/path@x` and `bucket/key@2x` are not credentials."""
    _, sep, rest = str(uri).partition("://")
    if not sep:
        return False
    if "@" in rest.split("/", 1)[0]:
        return True
    before = rest.rpartition("@")[0]
    user, colon, after = before.partition(":")
    if not before or not colon or "/" in user:
        return False
    port = after.split("/", 1)[0]
    return not (port.isdigit() and len(port) <= 5)


def _mask_userinfo(match: re.Match) -> str:
    rest = match.group("rest")
    if not carries_credentials(match.group(0)):
        return match.group(0)
    authority = rest.split("/", 1)[0]
    # A bare token (`tok@host/...`) ends at the authority's last @. A `user:password` may hold "/"
    # and "@", so it is masked up to the URI's last @ (more than needed, never less).
    user_password = ":" in authority.split("@", 1)[0] or "@" not in authority
    cut = rest.rindex("@") if user_password else authority.rindex("@")
    return match.group("scheme") + REDACTED + rest[cut:]


def redact(value, name: str | None = None) -> str:
    """`value` as text safe to print, log or store: `***` when `name` (a variable, param, tag or
    option name) names a secret, else the text with every credential inside it masked."""
    if name is not None and is_secret(name):
        return REDACTED
    text = _URI.sub(_mask_userinfo, str(value))
    text = _PAIR.sub(lambda m: f"{m.group('name')}={REDACTED}" if is_secret(m.group("name")) else m.group(0), text)
    text = _OPTION.sub(lambda m: m.group("name") + m.group("sep") + REDACTED if is_secret(m.group("name"))
                       else m.group(0), text)
    return _BEARER.sub(lambda m: m.group("scheme") + REDACTED, text)
