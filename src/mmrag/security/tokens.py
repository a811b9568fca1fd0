"""Callers from a JWT signed by a trusted identity provider (PyJWT).

The server verifies the signature against a key it was given (``access.jwt_key_file``, a PEM
public key, or ``access.jwt_jwks_file``, a JWKS document on disk: keys are never fetched), the
expiry, and the issuer and audience when they are configured. The groups come from one claim
(``access.jwt_groups_claim``, default ``groups``) and the subject from ``sub``. A token grants the
``read`` scope on ``access.jwt_collections``; writes and admin need an mmrag API key.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from mmrag.http.apikeys import ApiKey
from mmrag.errors import ConfigError, UnauthorizedError
from mmrag.security.labels import check_groups

_SUBJECT_UNSAFE = re.compile(r"[^A-Za-z0-9_.@+-]")


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a JWT, not an mmrag key."""
    return token.count(".") == 2 and not token.startswith("mmrag_")


class JwtVerifier:
    """Turns a bearer JWT into the :class:`~mmrag.http.apikeys.ApiKey` it stands for.

    Args:
        key_file: a PEM public key (RSA, EC or Ed25519).
        jwks_file: a JWKS JSON file; the token's ``kid`` picks the key.
        issuer: the required ``iss``; None: not checked.
        audience: the required ``aud``; None: a token with an ``aud`` is refused (PyJWT's rule).
        groups_claim: the claim with the caller's groups.
        algorithms: accepted signature algorithms (never ``none``, never an HMAC one, so a public
            key cannot be used as a shared secret).
        collections: what the token may read.

    Raises:
        ConfigError: neither file, both, or one that cannot be read as a key.
    """

    def __init__(self, *, key_file: Path | None = None, jwks_file: Path | None = None, issuer: str | None = None,
                 audience: str | None = None, groups_claim: str = "groups",
                 algorithms: Sequence[str] = ("RS256", "ES256", "EdDSA"), collections: Sequence[str] = ("*",)) -> None:
        import jwt

        if (key_file is None) == (jwks_file is None):
            raise ConfigError("JWT auth needs exactly one of access.jwt_key_file and access.jwt_jwks_file")
        bad = [a for a in algorithms if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            raise ConfigError(f"access.jwt_algorithms: {', '.join(bad)} not allowed (use RS256, ES256 or EdDSA)")
        self.issuer, self.audience, self.groups_claim = issuer, audience, groups_claim
        self.algorithms, self.collections = list(algorithms), tuple(collections)
        self._keys: dict[str | None, Any] = {}
        try:
            if key_file is not None:
                pem = Path(key_file).read_bytes()
                self._keys[None] = jwt.algorithms.get_default_algorithms()[self.algorithms[0]].prepare_key(pem)
            else:
                jwks = jwt.PyJWKSet.from_dict(json.loads(Path(jwks_file).read_text(encoding="utf-8")))  # type: ignore[arg-type]
                self._keys = {k.key_id: k.key for k in jwks.keys}
        except (OSError, ValueError, KeyError, jwt.PyJWTError) as exc:
            raise ConfigError(f"cannot read the JWT verification key {key_file or jwks_file}: {exc}") from exc

    @classmethod
    def from_settings(cls, access: Any) -> "JwtVerifier | None":
        """A verifier from ``settings.access``; None when no JWT key is configured."""
        if access.jwt_key_file is None and access.jwt_jwks_file is None:
            return None
        return cls(key_file=access.jwt_key_file, jwks_file=access.jwt_jwks_file, issuer=access.jwt_issuer,
                   audience=access.jwt_audience, groups_claim=access.jwt_groups_claim,
                   algorithms=access.jwt_algorithms, collections=access.jwt_collections)

    def verify(self, token: str) -> ApiKey:
        """The read-only key a valid token stands for.

        Raises:
            UnauthorizedError: a bad signature, an expired token, a wrong issuer or audience, an
                unknown ``kid``, or a groups claim that is not a list of names.
        """
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(header.get("kid")) if None not in self._keys else self._keys[None]
            if key is None:
                raise UnauthorizedError("token signed by a key this server does not trust (unknown kid)")
            claims = jwt.decode(token, key, algorithms=self.algorithms, issuer=self.issuer, audience=self.audience,
                                options={"require": ["exp", "sub"]})
        except jwt.PyJWTError as exc:
            raise UnauthorizedError(f"invalid token: {exc}") from exc
        raw = claims.get(self.groups_claim, [])
        names = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UnauthorizedError(f"invalid token: claim {self.groups_claim!r} must be a list of group names")
        try:
            groups = check_groups([n for n in names if n != "*"], f"token claim {self.groups_claim!r}")
        except Exception as exc:  # an InvalidInputError: the token, not the request body, is at fault
            raise UnauthorizedError(str(exc)) from exc
        subject = _SUBJECT_UNSAFE.sub("_", str(claims["sub"]))[:128] or None
        return ApiKey(id="jwt", name=f"jwt:{subject}", hash="", scopes=("read",), collections=self.collections,
                      created="", groups=groups, subject=subject)
