"""NATS credentials and TLS: the CLI's options, and real nats-servers that demand them.

The servers are started here with configuration files (user/password, token,
nkeys, TLS, mutual TLS with a CA made in the test). Secrets must never reach a
command line (``/proc/PID/cmdline`` of ``thaw serve`` and of its ``--workers``),
an error, a log line or a repr; wrong credentials fail within a bound with one
clear line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats_fixtures import ConfiguredServer, configured_server, wait_line
from nats_pki import make_operator, make_pki, tls_config

from thaw.adapters.cli import command as cli
from thaw.adapters.cli.nats_options import (
    ENVIRONMENT,
    NatsOptionsError,
    add_nats_options,
    nats_settings,
    strip_credentials,
)
from thaw.adapters.nats import JetStreamBackbone, JetStreamOptions
from thaw.lowlevel import BackboneError

ROOT = Path(__file__).resolve().parent.parent
HELLO = str(ROOT / "examples" / "hello")
SECRET = "pa55-w0rd-that-must-stay-hidden"
CONNECT_BOUND = 15.0  # seconds: a refused connection fails well within this
WAIT = 60.0  # bound on starting `thaw serve --workers 2` on a busy machine


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_nats_options(parser)
    return parser.parse_args(argv)


# -- the options, without a server ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "stripped", "user", "password"),
    [
        ("nats://ann:s3cret@127.0.0.1:4222", "nats://127.0.0.1:4222", "ann", "s3cret"),
        ("nats://tok@127.0.0.1:4222", "nats://127.0.0.1:4222", "tok", None),
        ("tls://ann:p%40ss%3A@h:1,tls://ann:p%40ss%3A@g:2", "tls://h:1,tls://g:2", "ann", "p@ss:"),
        ("nats://ann:x@[::1]:4222", "nats://[::1]:4222", "ann", "x"),
        ("127.0.0.1:4222", "127.0.0.1:4222", None, None),
    ],
)
def test_urls_are_stripped_of_their_credentials(
    url: str, stripped: str, user: str | None, password: str | None
) -> None:
    assert strip_credentials(url) == (stripped, user, password)


def test_urls_with_different_credentials_are_refused() -> None:
    with pytest.raises(NatsOptionsError, match="different credentials") as raised:
        strip_credentials("nats://a:one@h:1,nats://a:two@g:2")
    assert "one" not in str(raised.value) and "two" not in str(raised.value)


@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40))
def test_no_password_survives_in_the_stripped_url_or_the_repr(password: str) -> None:
    from urllib.parse import quote

    url = f"nats://ann:{quote(password, safe='')}@127.0.0.1:4222"
    settings = nats_settings(parse("--nats", url), environ={})
    assert settings.password == password and settings.user == "ann"
    assert settings.url == "nats://127.0.0.1:4222"
    assert repr(settings) == "NatsSettings(url='nats://127.0.0.1:4222', user='ann', password=***)"


def test_a_password_flag_is_refused_without_echoing_it(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in ("--nats-password", "--nats-token"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["dlq", "list", "--nats", "nats://127.0.0.1:1", flag, SECRET])
        assert exit_info.value.code == cli.EXIT_USAGE
        err = capsys.readouterr().err
        assert f"{flag} is not accepted" in err and SECRET not in err


def test_a_password_in_the_url_on_the_command_line_is_warned_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    nats_settings(parse("--nats", f"nats://ann:{SECRET}@h:1"), environ={})
    err = capsys.readouterr().err
    assert "process list" in err and SECRET not in err
    # From the environment it is not on any command line: no warning.
    nats_settings(parse(), environ={"THAW_NATS_URL": f"nats://ann:{SECRET}@h:1"})
    assert capsys.readouterr().err == ""


def test_secrets_come_from_files_and_the_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    from_file = nats_settings(
        parse("--nats-user", "ann", "--nats-password-file", str(secret_file)), environ={}
    )
    assert (from_file.user, from_file.password) == ("ann", SECRET)
    env = {"THAW_NATS_USER": "bob", "THAW_NATS_PASSWORD": "from-env"}
    assert nats_settings(parse(), environ=env).password == "from-env"
    # A flag wins over its variable.
    flagged = nats_settings(parse("--nats-password-file", str(secret_file)), environ=env)
    assert flagged.password == SECRET and flagged.user == "bob"
    token_env = {"THAW_NATS_TOKEN_FILE": str(secret_file)}
    assert nats_settings(parse(), environ=token_env).token == SECRET
    assert SECRET not in repr(flagged) and SECRET not in repr(flagged.options().keys())
    child = flagged.child_environment()
    assert child["THAW_NATS_PASSWORD"] == SECRET and child["THAW_NATS_USER"] == "bob"
    assert set(child) <= set(ENVIRONMENT.values())


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (("--nats-user", "ann"), {}, "needs a password"),
        ((), {"THAW_NATS_PASSWORD": SECRET}, "needs a user name"),
        (
            (),
            {"THAW_NATS_PASSWORD": SECRET, "THAW_NATS_USER": "a", "THAW_NATS_TOKEN": "t"},
            "one way",
        ),
        (("--nats", "nats://ann:other@h:1"), {"THAW_NATS_PASSWORD": SECRET}, "given twice"),
        (("--nats-creds", "/nonexistent/x.creds"), {}, "cannot read the file"),
        (("--nats-tls-key", "/dev/null"), {}, "needs its certificate"),
        (("--nats-inbox-prefix", "_INBOX.>"), {}, "--nats-inbox-prefix"),
        ((), {"THAW_NATS_REPLICAS": "7"}, "THAW_NATS_REPLICAS"),
    ],
)
def test_contradictory_or_incomplete_options_are_refused(
    argv: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    with pytest.raises(NatsOptionsError, match=message) as raised:
        nats_settings(parse(*argv), environ=env)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    "content", [b"", b"\n", b"two\nlines\n", b"\xff\xfe", b"x" * (64 * 1024 + 1)]
)
def test_bad_password_files_are_refused_without_their_content(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(NatsOptionsError, match="--nats-password-file") as raised:
        nats_settings(parse("--nats-user", "a", "--nats-password-file", str(path)), environ={})
    assert str(path) in str(raised.value) and "lines" not in str(raised.value)


def test_replicas_come_from_the_flag_or_the_environment() -> None:
    assert nats_settings(parse("--replicas", "3"), environ={}).options() == {"replicas": 3}
    assert nats_settings(parse(), environ={"THAW_NATS_REPLICAS": "5"}).replicas == 5
    with pytest.raises(SystemExit):
        parse("--replicas", "6")


# -- real servers ------------------------------------------------------------------------

USERS = f"""
authorization {{
  users: [
    {{ user: ann, password: "{SECRET}" }}
  ]
}}
"""


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfiguredServer]:
    with configured_server(USERS, tmp_path_factory.mktemp("password-server")) as server:
        yield server


async def _round_trip(url: str, options: JetStreamOptions) -> None:
    """Connect, then make a JetStream API call (an account info) and close."""
    with anyio.fail_after(CONNECT_BOUND):
        backbone = await JetStreamBackbone.connect(url, options=options)
        try:
            reply = await backbone.client.request("$JS.API.INFO", b"", timeout=5)
            assert b'"type":"io.nats.jetstream.api.v1.account_info_response"' in reply.data
        finally:
            await backbone.aclose()


async def _refused(url: str, options: JetStreamOptions) -> str:
    with anyio.fail_after(CONNECT_BOUND), pytest.raises(BackboneError) as raised:
        await JetStreamBackbone.connect(url, options=options)
    message = str(raised.value)
    assert "\n" not in message
    return message


@pytest.mark.anyio
async def test_user_and_password(password_server: ConfiguredServer) -> None:
    await _round_trip(password_server.url, JetStreamOptions(user="ann", password=SECRET))
    message = await _refused(password_server.url, JetStreamOptions(user="ann", password="wrong"))
    assert "refused the credentials" in message and "wrong" not in message
    assert "refused the credentials" in await _refused(password_server.url, JetStreamOptions())


@pytest.mark.anyio
async def test_token(tmp_path: Path) -> None:
    config = f'authorization {{ token: "{SECRET}" }}'
    with configured_server(config, tmp_path) as server:
        await _round_trip(server.url, JetStreamOptions(token=SECRET))
        assert "refused" in await _refused(server.url, JetStreamOptions(token="nope"))


@pytest.mark.anyio
async def test_nkeys_seed_file(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    other = tmp_path / "other.nk"
    other.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    config = f"authorization {{ users: [ {{ nkey: {public} }} ] }}"
    with configured_server(config, tmp_path / "server") as server:
        await _round_trip(server.url, JetStreamOptions(nkeys_seed_file=str(seed_file)))
        message = await _refused(server.url, JetStreamOptions(nkeys_seed_file=str(other)))
        assert "refused the credentials" in message


@pytest.mark.anyio
async def test_creds_file(tmp_path: Path) -> None:
    config = make_operator(tmp_path / "creds")
    with configured_server(config, tmp_path / "server") as server:
        creds = str(tmp_path / "creds" / "user.creds")
        await _round_trip(server.url, JetStreamOptions(creds_file=creds))
        stranger = JetStreamOptions(creds_file=str(tmp_path / "creds" / "stranger.creds"))
        assert "refused the credentials" in await _refused(server.url, stranger)
        result = await anyio.to_thread.run_sync(
            lambda: _thaw("dlq", "list", "--nats", server.url, "--nats-creds", creds, env={})
        )
        assert result.returncode == 0, result.stderr


# -- TLS, with a CA made here -------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.anyio
async def test_tls_with_the_test_ca(pki: Path, tmp_path: Path) -> None:
    with configured_server(tls_config(pki, verify=False), tmp_path) as server:
        url = f"tls://127.0.0.1:{server.port}"
        await _round_trip(url, JetStreamOptions(tls_ca_file=str(pki / "ca.pem")))
        # The certificate names nats.test too: checked against that name instead.
        named = JetStreamOptions(tls_ca_file=str(pki / "ca.pem"), tls_server_name="nats.test")
        await _round_trip(url, named)
        wrong_name = JetStreamOptions(tls_ca_file=str(pki / "ca.pem"), tls_server_name="evil.test")
        assert "TLS failed" in await _refused(url, wrong_name)
        untrusted = JetStreamOptions(tls_ca_file=str(pki / "other-ca.pem"))
        message = await _refused(url, untrusted)
        assert "TLS failed" in message and "certificate verify failed" in message


@pytest.mark.anyio
async def test_mutual_tls_needs_the_client_certificate(pki: Path, tmp_path: Path) -> None:
    with configured_server(tls_config(pki, verify=True), tmp_path) as server:
        url = f"tls://127.0.0.1:{server.port}"
        ca = str(pki / "ca.pem")
        client = JetStreamOptions(
            tls_ca_file=ca,
            tls_cert_file=str(pki / "client.pem"),
            tls_key_file=str(pki / "client.key"),
        )
        await _round_trip(url, client)
        await _refused(url, JetStreamOptions(tls_ca_file=ca))
        # The same through the command line's flags, and through its environment.
        flags = ("--nats", url, "--nats-tls-ca", ca, "--nats-tls-cert", str(pki / "client.pem"))
        key = str(pki / "client.key")
        result = await anyio.to_thread.run_sync(
            lambda: _thaw("dlq", "list", *flags, "--nats-tls-key", key, env={})
        )
        assert result.returncode == 0, result.stderr
        env = {"THAW_NATS_TLS_CA": ca, "THAW_NATS_TLS_CERT": str(pki / "client.pem")}
        env["THAW_NATS_TLS_KEY"] = key
        result = await anyio.to_thread.run_sync(lambda: _thaw("dlq", "list", *flags[:2], env=env))
        assert result.returncode == 0, result.stderr
        del env["THAW_NATS_TLS_CERT"], env["THAW_NATS_TLS_KEY"]  # mTLS without a certificate
        result = await anyio.to_thread.run_sync(lambda: _thaw("dlq", "list", *flags[:2], env=env))
        assert result.returncode == cli.EXIT_FAILED
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# -- the command line against a server -----------------------------------------------------


def _thaw(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    for name in ENVIRONMENT.values():
        if name not in env:
            full.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "thaw.adapters.cli", *argv],
        capture_output=True,
        text=True,
        env=full,
        timeout=WAIT,
        check=False,
    )


def test_wrong_credentials_are_one_clear_line(password_server: ConfiguredServer) -> None:
    env = {"THAW_NATS_USER": "ann", "THAW_NATS_PASSWORD": "not-it"}
    result = _thaw("dlq", "list", "--nats", password_server.url, env=env)
    assert result.returncode == cli.EXIT_FAILED
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "refused the credentials" in lines[0] and "not-it" not in result.stderr


def test_dlq_and_provision_connect_with_the_shared_options(
    password_server: ConfiguredServer, tmp_path: Path
) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET)
    flags = ("--nats", password_server.url, "--nats-user", "ann")
    result = _thaw("dlq", "list", *flags, "--nats-password-file", str(secret_file), env={})
    assert result.returncode == 0, result.stderr
    result = _thaw("provision", HELLO, *flags, env={"THAW_NATS_PASSWORD": SECRET})
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and SO_REUSEPORT")
def test_serve_workers_keep_the_password_off_every_command_line(
    password_server: ConfiguredServer, tmp_path: Path
) -> None:
    # The password in the URL is the worst case: the parent was handed it in argv (and
    # warns), and must not pass it on to its workers' command lines.
    url = f"nats://ann:{SECRET}@127.0.0.1:{password_server.port}"
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT.values()}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "thaw.adapters.cli", "serve", HELLO, "--http", "0"]
    command += ["--nats", url, "--workers", "2", "--state-dir", str(tmp_path / "state")]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        line = wait_line(process, "with 2 workers")
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        pids = [int(p) for p in line.split("worker pids: ")[1].rstrip(")\n").split(", ")]
        for pid in pids:
            assert SECRET not in _cmdline(pid)
            assert f"nats://127.0.0.1:{password_server.port}" in _cmdline(pid)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/greet", data=b'{"name": "Ada"}', method="POST"
        )
        with urllib.request.urlopen(request, timeout=WAIT) as response:  # the workers connected
            assert json.loads(response.read())["message"] == "Hello, Ada!"
    finally:
        process.terminate()
        _out, err = process.communicate(timeout=WAIT)
    assert "process list" in err  # the parent's warning
    assert SECRET not in err


def test_replicas_reach_the_streams_thaw_creates(password_server: ConfiguredServer) -> None:
    # A single server refuses replicated streams: proof that --replicas got there.
    env = {"THAW_NATS_USER": "ann", "THAW_NATS_PASSWORD": SECRET}
    notifications = str(ROOT / "examples" / "notification_fanout")
    result = _thaw(
        "provision", notifications, "--nats", password_server.url, "--replicas", "3", env=env
    )
    assert result.returncode == cli.EXIT_FAILED
    assert "replicas > 1 not supported" in result.stderr
    env["THAW_NATS_REPLICAS"] = "3"
    result = _thaw("provision", notifications, "--nats", password_server.url, env=env)
    assert "replicas > 1 not supported" in result.stderr


@given(st.text(max_size=80))
def test_any_url_text_is_stripped_or_refused_cleanly(text: str) -> None:
    try:
        stripped, _user, _password = strip_credentials(text)
    except NatsOptionsError:
        return  # a clear refusal (any other exception fails the test)
    assert strip_credentials(stripped)[1:] == (None, None)  # no user info is left


def test_thaw_dev_hands_its_app_the_settings_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from thaw.adapters.cli.nats_options import backbone_target, export_to_children
    from thaw.adapters.cli.supervise import worker_command

    for name in ENVIRONMENT.values():  # each recorded, so the test leaves none behind
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("THAW_NATS_URL", f"nats://ann:{SECRET}@127.0.0.1:4222")
    args = argparse.Namespace(
        app=HELLO,
        backbone="nats",
        url=None,
        state_dir=".thaw",
        drain_timeout=1.0,
        http_host="127.0.0.1",
        ack_wait=None,
        max_body=None,
        no_http=True,
        access_log=True,
        **vars(parse("--nats-tls-ca", "/dev/null")),
    )
    kind, url, _settings = backbone_target(args)
    export_to_children(args)
    assert os.environ["THAW_NATS_PASSWORD"] == SECRET and os.environ["THAW_NATS_USER"] == "ann"
    assert os.environ["THAW_NATS_TLS_CA"] == "/dev/null"
    command = worker_command(args, kind=kind, url=url, port=0)
    assert SECRET not in " ".join(command) and "nats://127.0.0.1:4222" in command
