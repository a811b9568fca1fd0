"""Issue 28, acceptance 5: ``mmrag serve --tls-cert/--tls-key`` answers the official ``openai`` client over HTTPS.

The certificate is self-signed, made here with ``cryptography``; the client trusts exactly it. A
bad certificate or key is refused with exit status 2, naming the file, before any model loads.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from click.testing import CliRunner

from mmrag.cli import main
from mmrag.kb import release_embedded_store
from tests.conftest import free_port

FAQ = "The visitor centre opens at nine in the morning and closes at six in the evening on weekdays.\n"


def _self_signed(folder: Path, name: str = "server") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A real ``mmrag serve`` subprocess over HTTPS (offline models), with a read key."""
    root = tmp_path_factory.mktemp("tls")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "visitor-faq.txt").write_text(FAQ)
    data_dir = root / "data"
    result = CliRunner().invoke(main, ["ingest", str(corpus), "--profile", "offline", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    release_embedded_store(data_dir)
    made = CliRunner().invoke(main, ["keys", "create", "tls", "--scope", "read", "--data-dir", str(data_dir), "--json"])
    assert made.exit_code == 0, made.output
    token = json.loads(made.stdout)["token"]
    cert, key = _self_signed(root)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMRAG_")}
    log = root / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "mmrag", "serve", "--profile", "offline", "--data-dir",
                             str(data_dir), "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", verify=_trusting(cert), timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield url, token, cert
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_openai_client_over_https_with_a_self_signed_certificate(tls_server: tuple[str, str, Path]) -> None:
    from openai import OpenAI

    url, token, cert = tls_server
    with httpx.Client(verify=_trusting(cert)) as http:
        client = OpenAI(base_url=f"{url}/v1", api_key=token, timeout=120, max_retries=0, http_client=http)
        reply = client.chat.completions.create(
            model="mmrag", messages=[{"role": "user", "content": "When does the visitor centre close on weekdays?"}])
    assert "six" in (reply.choices[0].message.content or "")
    assert (reply.model_extra or {})["citations"][0]["doc_id"] == "visitor-faq.txt"
    # Only TLS is spoken: a client that does not trust the certificate is refused, and so is plain HTTP.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/readyz")
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/readyz", timeout=5)


def _serve(*args: str) -> tuple[int, str]:
    started = time.monotonic()
    result = CliRunner().invoke(main, ["serve", "--profile", "offline", "--port", str(free_port()), *args])
    # Refused before the store is opened or a model loads.
    assert time.monotonic() - started < 5, "serve should refuse a bad certificate before loading anything"
    return result.exit_code, result.output


def test_bad_certificates_and_keys_are_refused_naming_the_file(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    other_cert, other_key = _self_signed(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key)], "missing.crt"),
        (["--tls-cert", str(cert), "--tls-key", str(tmp_path / "missing.key")], "missing.key"),
        (["--tls-cert", str(garbage), "--tls-key", str(key)], "garbage.pem"),
        (["--tls-cert", str(cert), "--tls-key", str(garbage)], "garbage.pem"),
        (["--tls-cert", str(cert), "--tls-key", str(other_key)], "other.key"),
        (["--tls-cert", str(cert)], "--tls-key"),
        (["--tls-key", str(key)], "--tls-cert"),
    ]
    for args, named in cases:
        code, output = _serve(*args)
        assert code == 2 and named in output, (args, output)
    assert "does not match" in _serve("--tls-cert", str(cert), "--tls-key", str(other_key))[1]
    assert other_cert.exists()


def test_tls_files_come_from_the_environment_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, _ = _self_signed(tmp_path)
    monkeypatch.setenv("MMRAG_API__TLS_CERT", str(cert))
    monkeypatch.setenv("MMRAG_API__TLS_KEY", str(tmp_path / "absent.key"))
    code, output = _serve()
    assert code == 2 and "absent.key" in output


def test_an_encrypted_key_is_refused_with_what_to_do(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert, _ = _self_signed(tmp_path)
    locked = tmp_path / "locked.key"
    locked.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    code, output = _serve("--tls-cert", str(cert), "--tls-key", str(locked))
    assert code == 2 and "locked.key" in output and "encrypted" in output
