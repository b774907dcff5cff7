"""The NATS connection options of every ``thaw`` command that connects: flags, env, files.

``add_nats_options(parser)`` adds the same group of flags to ``serve``, ``dev``,
``provision``, ``dlq ...``, ``policy`` and ``edge serve``; ``nats_settings(args)``
resolves them, with the environment (``THAW_NATS_*``, see ``ENVIRONMENT``) under
the flags, into one ``NatsSettings``.

Invariants:
- No flag carries a secret value. Passwords and tokens come from the environment
  or from files (``--nats-password-file``); ``--nats-password`` and ``--nats-token``
  exist only to refuse, without echoing the value. A password in the ``--nats``
  URL is taken (and warned about: the process list shows it); the URL is then
  stripped of it, so it reaches no child, log line or error.
- A child process (``--workers``, ``thaw dev``, the edge host) gets its settings
  through ``child_environment()``: the stripped URL on its command line, every
  secret in its environment (readable by its own user only, unlike
  ``/proc/PID/cmdline``).
- Each credential comes from one place: a password in the URL and one in the
  environment is an error, never a silent choice; a flag overrides its
  environment variable. At most one way of authenticating is given.
- ``NatsSettings`` never shows a secret in its repr; errors name files and
  variables, never their contents.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec

from thaw._errors import ConfigError
from thaw.backbone._subjects import validate_subject

__all__ = [
    "ENVIRONMENT",
    "MAX_REPLICAS",
    "NatsOptionsError",
    "NatsSettings",
    "add_nats_options",
    "backbone_target",
    "child_environment",
    "connection_options",
    "environment_for_child",
    "export_to_children",
    "nats_settings",
    "strip_credentials",
]

MAX_REPLICAS = 5  # JetStream's limit for a stream's replicas
MAX_SECRET_FILE = 64 * 1024  # a password or token file larger than this is a mistake

# Setting -> its environment variable. A flag, where there is one, wins over it.
ENVIRONMENT: dict[str, str] = {
    "url": "THAW_NATS_URL",
    "user": "THAW_NATS_USER",
    "password": "THAW_NATS_PASSWORD",
    "password_file": "THAW_NATS_PASSWORD_FILE",
    "token": "THAW_NATS_TOKEN",
    "token_file": "THAW_NATS_TOKEN_FILE",
    "nkeys_seed_file": "THAW_NATS_NKEY_SEED_FILE",
    "creds_file": "THAW_NATS_CREDS",
    "tls_ca_file": "THAW_NATS_TLS_CA",
    "tls_cert_file": "THAW_NATS_TLS_CERT",
    "tls_key_file": "THAW_NATS_TLS_KEY",
    "tls_server_name": "THAW_NATS_TLS_SERVER_NAME",
    "inbox_prefix": "THAW_NATS_INBOX_PREFIX",
    "replicas": "THAW_NATS_REPLICAS",
}
_FILES = ("nkeys_seed_file", "creds_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
_PLAIN = ("user", "tls_server_name", "inbox_prefix", *_FILES)


class NatsOptionsError(ConfigError):
    """The NATS connection options are incomplete, contradictory or unreadable."""

    code = "nats_options"


class NatsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Resolved connection settings: ``url`` has no credentials in it."""

    url: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkeys_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_server_name: str | None = None
    inbox_prefix: str | None = None
    replicas: int | None = None

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={'***' if name in ('password', 'token') else repr(value)}"
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not None
        )
        return f"NatsSettings({shown})"

    def options(self) -> dict[str, Any]:
        """The ``JetStreamOptions`` fields to connect with (what is set)."""
        fields = {name: getattr(self, name) for name in self.__struct_fields__}
        del fields["url"]
        return {name: value for name, value in fields.items() if value is not None}

    def child_environment(self) -> dict[str, str]:
        """``THAW_NATS_*`` for a child process that connects as this one does.

        The URL is left out: the child gets it (stripped) on its command line.
        """
        found: dict[str, str] = {}
        for name, value in self.options().items():
            found[ENVIRONMENT[name]] = str(value)
        return found


def add_nats_options(parser: argparse.ArgumentParser, *, url_flag: bool = True) -> None:
    """The NATS connection flags (``url_flag``: add ``--nats URL`` too)."""
    group = parser.add_argument_group(
        "NATS connection",
        "Each flag has a THAW_NATS_* environment variable under it (docs/security.md); "
        "passwords and tokens come only from the environment or from files.",
    )
    if url_flag:
        group.add_argument(
            "--nats",
            metavar="URL",
            help="short for --backbone nats --url URL (env THAW_NATS_URL); "
            "nats://host:port, tls://host:port, or several, comma-separated",
        )
    group.add_argument("--nats-user", metavar="NAME", help="user name (THAW_NATS_USER)")
    group.add_argument(
        "--nats-password-file",
        metavar="FILE",
        help="read the password from FILE (THAW_NATS_PASSWORD_FILE, or THAW_NATS_PASSWORD)",
    )
    group.add_argument(
        "--nats-token-file",
        metavar="FILE",
        help="read the token from FILE (THAW_NATS_TOKEN_FILE, or THAW_NATS_TOKEN)",
    )
    group.add_argument(
        "--nats-nkey-seed", metavar="FILE", help="an nkey seed file (THAW_NATS_NKEY_SEED_FILE)"
    )
    group.add_argument(
        "--nats-creds", metavar="FILE", help="a .creds file: JWT and nkey seed (THAW_NATS_CREDS)"
    )
    group.add_argument(
        "--nats-tls-ca", metavar="FILE", help="CA certificates to trust (THAW_NATS_TLS_CA)"
    )
    group.add_argument(
        "--nats-tls-cert", metavar="FILE", help="client certificate, mTLS (THAW_NATS_TLS_CERT)"
    )
    group.add_argument("--nats-tls-key", metavar="FILE", help="its private key (THAW_NATS_TLS_KEY)")
    group.add_argument(
        "--nats-tls-server-name",
        metavar="NAME",
        help="the name the server's certificate must have, when the URL's host differs "
        "(THAW_NATS_TLS_SERVER_NAME)",
    )
    group.add_argument(
        "--nats-inbox-prefix",
        metavar="PREFIX",
        help="subject prefix of reply inboxes, _INBOX by default (THAW_NATS_INBOX_PREFIX); "
        "see thaw policy export",
    )
    group.add_argument(
        "--replicas",
        type=_replicas,
        metavar="N",
        help=f"replicas of the streams and buckets Thaw creates, 1..{MAX_REPLICAS} "
        "(THAW_NATS_REPLICAS; 1)",
    )
    for secret in ("--nats-password", "--nats-token"):
        # Exact flags, so that argparse never takes them for an abbreviation of the
        # *-file flags (and then prints the secret as a file name that cannot be read).
        group.add_argument(secret, action=_RefuseSecret, help=argparse.SUPPRESS)


class _RefuseSecret(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        what = (
            "THAW_NATS_TOKEN or --nats-token-file"
            if "token" in self.dest
            else ("THAW_NATS_PASSWORD or --nats-password-file")
        )
        parser.error(
            f"{option_string} is not accepted: a secret on the command line is visible to "
            f"every user of this machine in the process list; use {what}"
        )


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if not 1 <= value <= MAX_REPLICAS:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and {MAX_REPLICAS}")
    return value


def strip_credentials(urls: str) -> tuple[str, str | None, str | None]:
    """``(urls without user info, user, password)`` of a comma-separated URL list.

    ``nats://TOKEN@host`` gives ``(url, TOKEN, None)``: a lone user name is a token,
    as in every NATS client. Several URLs must agree on their credentials.
    """
    kept: list[str] = []
    found: set[tuple[str | None, str | None]] = set()
    for url in (part.strip() for part in urls.split(",")):
        if not url:
            continue
        try:  # the URL may hold a password: never echoed in the error
            parts = urlsplit(url if "://" in url else f"nats://{url}")
            port = parts.port
        except ValueError:
            raise NatsOptionsError(
                "a NATS URL is malformed (a bad host or port); want nats://host:port"
            ) from None
        if parts.username is None and parts.password is None:
            kept.append(url)
            found.add((None, None))
            continue
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        found.add((user, password))
        netloc = (parts.hostname or "") + (f":{port}" if port is not None else "")
        if parts.hostname and ":" in parts.hostname:  # IPv6: keep its brackets
            netloc = f"[{parts.hostname}]" + (f":{port}" if port is not None else "")
        kept.append(urlunsplit(parts._replace(netloc=netloc)))
    if not kept:
        raise NatsOptionsError("the NATS URL is empty")
    with_credentials = {pair for pair in found if pair != (None, None)}
    if len(with_credentials) > 1:
        raise NatsOptionsError("the NATS URLs carry different credentials; give them once")
    user, password = next(iter(with_credentials), (None, None))
    return ",".join(kept), user, password


def nats_settings(
    args: argparse.Namespace, *, url: str | None = None, environ: Mapping[str, str] | None = None
) -> NatsSettings:
    """The settings from ``args`` (flags of ``add_nats_options``) over ``environ``.

    ``url`` is the URL the command was given (``--nats`` or ``--url``), if any.
    """
    env = os.environ if environ is None else environ
    given = url if url is not None else getattr(args, "nats", None)
    raw_url = given or env.get(ENVIRONMENT["url"]) or None
    plain = {name: _flag_or_env(args, name, env) for name in _PLAIN}
    password = _secret(args, env, "password")
    token = _secret(args, env, "token")
    stripped: str | None = None
    if raw_url is not None:
        stripped, url_user, url_password = strip_credentials(raw_url)
        if given and (url_user is not None or url_password is not None):
            _warn_url_credentials()  # they were on this command line, not in the environment
        if url_password is not None:
            plain["user"] = _once("user", plain["user"], url_user)
            password = _once("password", password, url_password)
        elif url_user is not None:
            token = _once("token", token, url_user)
    replicas_text = getattr(args, "replicas", None) or env.get(ENVIRONMENT["replicas"]) or None
    replicas = None
    if replicas_text is not None:
        try:
            replicas = _replicas(str(replicas_text))
        except argparse.ArgumentTypeError as error:
            raise NatsOptionsError(f"{ENVIRONMENT['replicas']}: {error}") from None
    settings = NatsSettings(
        url=stripped, password=password, token=token, replicas=replicas, **plain
    )
    _check(settings)
    return settings


def _warn_url_credentials() -> None:
    print(
        "thaw: warning: the NATS URL holds credentials, which every user of this machine can "
        "read in the process list; use THAW_NATS_URL, THAW_NATS_PASSWORD or "
        "--nats-password-file",
        file=sys.stderr,
    )


def _flag_or_env(args: argparse.Namespace, name: str, env: Mapping[str, str]) -> str | None:
    flag = getattr(args, _FLAGS[name], None)
    value = flag or env.get(ENVIRONMENT[name]) or None
    source = f"--{_FLAGS[name].replace('_', '-')}" if flag else ENVIRONMENT[name]
    if value is not None and name in _FILES and not os.access(value, os.R_OK):
        raise NatsOptionsError(f"{source}: cannot read the file {value!r}")
    if value is not None and name == "inbox_prefix":
        try:
            validate_subject(value, wildcards=False)
        except ConfigError as error:
            raise NatsOptionsError(f"{source}: {error.message}") from None
    return value


_FLAGS = {  # setting -> the attribute of its flag
    "user": "nats_user",
    "tls_server_name": "nats_tls_server_name",
    "inbox_prefix": "nats_inbox_prefix",
    "nkeys_seed_file": "nats_nkey_seed",
    "creds_file": "nats_creds",
    "tls_ca_file": "nats_tls_ca",
    "tls_cert_file": "nats_tls_cert",
    "tls_key_file": "nats_tls_key",
}


def _secret(args: argparse.Namespace, env: Mapping[str, str], name: str) -> str | None:
    """A password or token: from its file flag, else its variable, else its file variable."""
    path = getattr(args, f"nats_{name}_file", None)
    source = f"--nats-{name}-file"
    if path is None:
        value = env.get(ENVIRONMENT[name])
        if value:
            return value
        path, source = env.get(ENVIRONMENT[f"{name}_file"]) or None, ENVIRONMENT[f"{name}_file"]
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_FILE + 1)
    except OSError as error:
        raise NatsOptionsError(f"{source}: cannot read {path!r}: {error.strerror}") from None
    if len(data) > MAX_SECRET_FILE:
        raise NatsOptionsError(f"{source}: {path!r} is larger than {MAX_SECRET_FILE} bytes")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise NatsOptionsError(f"{source}: {path!r} is not UTF-8 text") from None
    if not text or "\n" in text:
        raise NatsOptionsError(f"{source}: {path!r} must hold the {name} on one line")
    return text


def _once(name: str, current: str | None, from_url: str | None) -> str | None:
    if current is not None and from_url is not None and current != from_url:
        raise NatsOptionsError(
            f"the NATS {name} is given twice, in the URL and as an option; give it once"
        )
    return current if current is not None else from_url


def _check(settings: NatsSettings) -> None:
    """Combinations no server accepts: refused here, clearly, instead of at connect."""
    ways = [
        name
        for name, value in (
            ("a password", settings.password),
            ("a token", settings.token),
            ("an nkey seed", settings.nkeys_seed_file),
            ("a .creds file", settings.creds_file),
        )
        if value is not None
    ]
    if len(ways) > 1:
        raise NatsOptionsError(
            f"NATS credentials: {' and '.join(ways)} are given; use one way to authenticate"
        )
    if settings.password is not None and settings.user is None:
        raise NatsOptionsError("a NATS password needs a user name (--nats-user, THAW_NATS_USER)")
    if settings.user is not None and settings.password is None:
        raise NatsOptionsError(
            "a NATS user name needs a password (THAW_NATS_PASSWORD, --nats-password-file)"
        )
    if settings.tls_key_file is not None and settings.tls_cert_file is None:
        raise NatsOptionsError("a TLS key needs its certificate (--nats-tls-cert)")


def backbone_target(args: argparse.Namespace) -> tuple[str, str | None, NatsSettings | None]:
    """``(backbone name, URL, NATS settings)`` of a command's ``--backbone``/``--url``/
    ``--nats`` and NATS flags; the URL has no credentials; settings only for ``nats``.

    Resolved once per command (a URL with a password warns once).
    """
    cached = getattr(args, "_nats_target", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    nats_url = getattr(args, "nats", None)
    kind, url = ("nats", nats_url) if nats_url else (args.backbone, getattr(args, "url", None))
    target: tuple[str, str | None, NatsSettings | None] = (kind, url, None)
    if kind == "nats":
        settings = nats_settings(args, url=url)
        target = (kind, settings.url, settings)
    args._nats_target = target
    return target


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options ``open_backbone`` takes for the command's backbone."""
    settings = backbone_target(args)[2]
    return settings.options() if settings is not None else {}


def child_environment(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a child ``thaw`` that connects as this command does: this
    one's, with every ``THAW_NATS_*`` replaced by the resolved settings."""
    return environment_for_child(backbone_target(args)[2], environ)


def environment_for_child(
    settings: NatsSettings | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``environ`` (this process's by default) with every ``THAW_NATS_*`` replaced by
    ``settings`` (removed when None), for a child that connects with them."""
    env = os.environ if environ is None else environ
    ours = set(ENVIRONMENT.values())
    child = {name: value for name, value in env.items() if name not in ours}
    if settings is not None:
        child.update(settings.child_environment())
    return child


def export_to_children(args: argparse.Namespace) -> None:
    """Put ``child_environment`` in this process's own environment, for children that
    inherit it (``thaw dev`` starts its app that way)."""
    wanted = child_environment(args)
    for name in ENVIRONMENT.values():
        if name not in wanted:
            os.environ.pop(name, None)
    os.environ.update(wanted)
