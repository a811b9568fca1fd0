"""``mmrag serve`` (the HTTP API) and ``mmrag keys`` (its API keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mmrag.cli._common import UsageFailure, common_options, emit, errors_to_click, main, settings_from
from mmrag.errors import ConfigError


@main.command()
@click.option("--host", envvar="MMRAG_API__HOST", default=None, help="Interface to listen on. [default: 127.0.0.1]")
@click.option("--port", envvar="MMRAG_API__PORT", type=click.IntRange(1, 65535), default=None,
              help="Port. [default: 8080]")
@click.option("--workers", envvar="MMRAG_API__WORKERS", type=click.IntRange(1, 64), default=None,
              help="Worker processes; more than one needs a Chroma server (--store-url). [default: 1]")
@click.option("--no-auth", is_flag=True,
              help="Serve without API keys (a laptop only: anyone who can reach the port can read and write).")
@click.option("--max-upload-mb", type=float, default=None, help="Largest upload accepted. [default: 50]")
@click.option("--tls-cert", type=click.Path(path_type=Path), envvar="MMRAG_API__TLS_CERT", default=None,
              help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.")
@click.option("--tls-key", type=click.Path(path_type=Path), envvar="MMRAG_API__TLS_KEY", default=None,
              help="The certificate's PEM private key (unencrypted).")
@common_options
@errors_to_click
def serve(host: str | None, port: int | None, workers: int | None, no_auth: bool, max_upload_mb: float | None,
          tls_cert: Path | None, tls_key: Path | None, as_json: bool, **opts: Any) -> None:
    """Serve the HTTP API: search, answers, OpenAI-compatible chat, uploads, /metrics.

    Requests need 'Authorization: Bearer KEY' (create keys with `mmrag keys create`). The OpenAPI
    schema is at /openapi.json and interactive docs at /docs.
    """
    import uvicorn

    s = settings_from(opts)
    if host:
        s.api.host = host
    if port:
        s.api.port = port
    if workers:
        s.api.workers = workers
    if no_auth:
        s.api.auth = False
    if max_upload_mb:
        s.api.max_upload_mb = max_upload_mb
    s.api.tls_cert = tls_cert or s.api.tls_cert
    s.api.tls_key = tls_key or s.api.tls_key
    check_tls(s.api.tls_cert, s.api.tls_key)  # before the store is claimed and any model loads
    check_serving(s)
    check_port(s.api.host, s.api.port)  # before uvicorn loads the app and its models
    if s.api.auth and not _keys(s).keys():
        click.echo(f"warning: no API keys in {_keys(s).path}; every request will get 401. Create one with "
                   "`mmrag keys create NAME --scope read`.", err=True)
    # Workers are separate processes: they rebuild the app from the environment, so the resolved
    # settings travel there as MMRAG_* variables.
    import os

    for name, value in _environment(s).items():
        os.environ[name] = value
    uvicorn.run("mmrag.http.app:create_app", factory=True, host=s.api.host, port=s.api.port,
                workers=s.api.workers, log_level="info", proxy_headers=False,
                ssl_certfile=str(s.api.tls_cert) if s.api.tls_cert else None,
                ssl_keyfile=str(s.api.tls_key) if s.api.tls_key else None)


def check_tls(cert: Path | None, key: Path | None) -> None:
    """Refuse a TLS certificate or key that uvicorn could not serve, naming the file at fault.

    Raises:
        UsageFailure: only one of the two is given, a file is missing or unreadable, is not PEM,
            the key is encrypted, or the key does not belong to the certificate (exit status 2).
    """
    if cert is None and key is None:
        return
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise UsageFailure(f"{given} needs {missing}: HTTPS takes a certificate and its private key")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def read(path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UsageFailure(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from exc

    try:
        x509.load_pem_x509_certificates(read(cert, "certificate"))
    except ValueError as exc:
        raise UsageFailure(f"the TLS certificate {cert} is not a PEM certificate ({exc})") from exc
    try:
        serialization.load_pem_private_key(read(key, "key"), password=None)
    except TypeError as exc:
        raise UsageFailure(f"the TLS key {key} is encrypted; serve needs an unencrypted key "
                           f"(openssl pkey -in {key} -out plain.key)") from exc
    except Exception as exc:  # noqa: BLE001 - cryptography raises ValueError or UnsupportedAlgorithm
        raise UsageFailure(f"the TLS key {key} is not a PEM private key ({exc})") from exc
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise UsageFailure(f"the TLS key {key} does not match the certificate {cert} ({exc.reason or exc})") from exc


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on, before any model loads (uvicorn would fail after start-up).

    Raises:
        UsageFailure: the port is in use (exit status 2).
        ConfigError: the address cannot be listened on for another reason (an unknown host).
    """
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            # As uvicorn does: a port whose old connections linger in TIME_WAIT is free to listen on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageFailure(f"port {port} on {host} is in use; pass --port or stop the other process") from exc
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host") from exc


def check_serving(s: Any) -> None:
    """Refuse configurations that would corrupt data.

    Raises:
        ConfigError: several workers on the embedded store.
        StoreBusyError: another process has the embedded store open.
        StoreDamagedError: the embedded store is damaged.
    """
    if s.api.workers > 1 and not s.store.url:
        raise ConfigError(
            f"{s.api.workers} workers need a Chroma server: the embedded store is not safe across processes. "
            "Start one with `chroma run --path DIR --host 127.0.0.1 --port 8000` and pass "
            "--store-url http://127.0.0.1:8000 (or serve with --workers 1).")
    if not s.store.url:
        # Claim the embedded store (and check it for damage) before serving: a store another
        # process holds is refused now, naming the holder, instead of a server that never gets ready.
        from mmrag.kb import KnowledgeBase
        from mmrag.registry import resolve_models

        KnowledgeBase(s.data_dir, s.collection, resolve_models(s)).client


def _environment(s: Any) -> dict[str, str]:
    env = {"MMRAG_DATA_DIR": str(Path(s.data_dir).resolve()), "MMRAG_PROFILE": s.profile,
           "MMRAG_COLLECTION": s.collection, "MMRAG_API__AUTH": str(s.api.auth).lower(),
           "MMRAG_API__MAX_UPLOAD_MB": str(s.api.max_upload_mb), "MMRAG_API__WORKERS": str(s.api.workers)}
    for name, value in (("MMRAG_CLIP__MODEL", s.clip.model), ("MMRAG_CLIP__PRETRAINED", s.clip.pretrained),
                        ("MMRAG_TEXT__MODEL", s.text.model), ("MMRAG_STORE__URL", s.store.url)):
        if value:
            env[name] = str(value)
    return env


def _keys(s: Any) -> Any:
    from mmrag.http.apikeys import KeyStore

    return KeyStore(s.api.keys_file or Path(s.data_dir) / "api_keys.json")


@main.group()
def keys() -> None:
    """Manage the API keys of `mmrag serve` (stored hashed in DATA_DIR/api_keys.json)."""


@keys.command(name="create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["read", "write", "admin"]), required=True,
              help="read: search/answer/chat; write: upload/delete; admin: drop collections. Repeatable.")
@click.option("--collection", "collections", multiple=True,
              help="A collection the key may use (repeatable). [default: all]")
@click.option("--groups", "groups", default="", metavar="A,B",
              help="Groups whose labelled documents the key reads (comma-separated; '*' for every document). "
                   "[default: none: unlabelled documents only]")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MMRAG_DATA_DIR", default=None,
              help="Where the server's state lives. [env MMRAG_DATA_DIR; default ./.mmrag]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@errors_to_click
def keys_create(name: str, scopes: tuple[str, ...], collections: tuple[str, ...], data_dir: Path | None,
                as_json: bool, groups: str = "") -> None:
    """Create a key named NAME and print its token (shown once; only its hash is stored)."""
    s = settings_from({"data_dir": data_dir})
    token, key = _keys(s).create(name, scopes=scopes, collections=collections or ("*",),
                                 groups=[g for g in groups.split(",") if g.strip()])
    if as_json:
        emit({"token": token, "id": key.id, "name": key.name, "scopes": list(key.scopes),
              "collections": list(key.collections), "groups": list(key.groups)})
        return
    click.echo(token)
    click.echo(f"key {key.id} ({name}): scopes {', '.join(key.scopes)}; collections {', '.join(key.collections)}; "
               f"groups {', '.join(key.groups) or '(none)'}. Store the token now: it cannot be shown again.", err=True)


@keys.command(name="list")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MMRAG_DATA_DIR", default=None,
              help="Where the server's state lives. [env MMRAG_DATA_DIR; default ./.mmrag]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@errors_to_click
def keys_list(data_dir: Path | None, as_json: bool) -> None:
    """List keys (ids, names, scopes, collections; never tokens)."""
    s = settings_from({"data_dir": data_dir})
    entries = [{"id": k.id, "name": k.name, "scopes": list(k.scopes), "collections": list(k.collections),
                "groups": list(k.groups), "created": k.created} for k in _keys(s).keys()]
    if as_json:
        emit(entries)
        return
    for e in entries:
        click.echo(f"{e['id']}  {e['name']:<20} {','.join(e['scopes']):<16} {','.join(e['collections'])}  {e['created']}")


@keys.command(name="revoke")
@click.argument("key_id")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="MMRAG_DATA_DIR", default=None,
              help="Where the server's state lives. [env MMRAG_DATA_DIR; default ./.mmrag]")
@errors_to_click
def keys_revoke(key_id: str, data_dir: Path | None) -> None:
    """Revoke the key KEY_ID (takes effect on the server's next request)."""
    s = settings_from({"data_dir": data_dir})
    key = _keys(s).revoke(key_id)
    click.echo(f"revoked {key.id} ({key.name})")
