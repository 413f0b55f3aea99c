"""Keys and tokens for tests/it/jwks.rs, made by PyJWT + cryptography (not by shunt).

Usage: python3 mint.py ISSUER AUDIENCE
Prints one JSON object: {"pem": {name: SPKI PEM}, "small_pem": PEM of a
1024-bit RSA key, "cert_pem": a self-signed certificate of the "ec256" key,
"jwk": {name: public JWK with kid = name}, "tokens": {case: token}}.
"""
import base64
import datetime
import hashlib
import hmac
import json
import sys
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

iss, aud = sys.argv[1], sys.argv[2]
now = int(time.time())

keys = {
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec256": ec.generate_private_key(ec.SECP256R1()),
    "ec384": ec.generate_private_key(ec.SECP384R1()),
    "ed": ed25519.Ed25519PrivateKey.generate(),
}
stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
small = rsa.generate_private_key(public_exponent=65537, key_size=1024)


def pem(private):
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def jwk(name, private):
    public = private.public_key()
    if isinstance(private, rsa.RSAPrivateKey):
        d = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        d = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        d = OKPAlgorithm.to_jwk(public, as_dict=True)
    d["kid"] = name
    d["use"] = "sig"
    return d


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over):
    c = {"sub": "alice", "iss": iss, "aud": aud, "iat": now, "exp": now + 600,
         "tenant": "acme", "level": 7}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def sign(key, alg, kid="__none__", **over):
    headers = {} if kid == "__none__" else {"kid": kid}
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)


cert_key = keys["ec256"]
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test idp")])
cert = (
    x509.CertificateBuilder()
    .subject_name(name)
    .issuer_name(name)
    .public_key(cert_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(datetime.datetime(2020, 1, 1))
    .not_valid_after(datetime.datetime(2040, 1, 1))
    .sign(cert_key, hashes.SHA256())
)

tokens = {
    "rs256": sign(keys["rsa"], "RS256", "rsa"),
    "rs512": sign(keys["rsa"], "RS512", "rsa"),
    "ps256": sign(keys["rsa"], "PS256", "rsa"),
    "es256": sign(keys["ec256"], "ES256", "ec256"),
    "es384": sign(keys["ec384"], "ES384", "ec384"),
    "eddsa": sign(keys["ed"], "EdDSA", "ed"),
    "no_kid": sign(keys["rsa"], "RS256"),
    "rsa2": sign(keys["rsa2"], "RS256", "rsa2", sub="bob"),
    "aud_array": sign(keys["rsa"], "RS256", "rsa", aud=["other", aud]),
    "expired": sign(keys["rsa"], "RS256", "rsa", iat=now - 7200, exp=now - 3600),
    "not_yet": sign(keys["rsa"], "RS256", "rsa", nbf=now + 3600),
    "no_exp": sign(keys["rsa"], "RS256", "rsa", exp=None),
    "wrong_aud": sign(keys["rsa"], "RS256", "rsa", aud="someone-else"),
    "wrong_iss": sign(keys["rsa"], "RS256", "rsa", iss="https://evil.example"),
    "wrong_key": sign(stranger, "RS256", "rsa"),
    "unknown_kid": sign(stranger, "RS256", "nope"),
    # An RS256 key's curve must not verify ES256: the EC key signs, the kid names the RSA key.
    "es_as_rsa": sign(keys["ec256"], "ES256", "rsa"),
}

# alg confusion: HS256 with the RSA public key's PEM as the HMAC secret.
header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa"}).encode())
payload = b64(json.dumps(claims()).encode())
mac = hmac.new(pem(keys["rsa"]).encode(), f"{header}.{payload}".encode(), hashlib.sha256)
tokens["confusion"] = f"{header}.{payload}.{b64(mac.digest())}"
# alg none.
tokens["none"] = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}."
# A truncated signature.
head, body, sig = tokens["rs256"].split(".")
raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
tokens["truncated"] = f"{head}.{body}.{b64(raw[:-16])}"

print(json.dumps({
    "pem": {n: pem(k) for n, k in keys.items()},
    "small_pem": pem(small),
    "cert_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
    "jwk": {n: jwk(n, k) for n, k in keys.items()},
    "tokens": tokens,
}))
