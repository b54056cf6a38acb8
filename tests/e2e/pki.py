"""Test PKI for the APNs scenarios: a CA, server and client certificates, APNs .p8 keys, and
.p12 files made with the `openssl` CLI (modern AES-256 and legacy RC2-40, as Keychain exports).

Everything is generated per test run with `cryptography`; nothing is shipped.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OPENSSL = os.environ.get("OPENSSL_BIN", "openssl")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _name(cn: str, org: str | None = None, uid: str | None = None) -> x509.Name:
    attrs = []
    if uid:
        attrs.append(x509.NameAttribute(NameOID.USER_ID, uid))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    key: object
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def common_name(self) -> str:
        return self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc

    def write(self, directory: str, stem: str) -> tuple[str, str]:
        """Write <stem>.pem (certificate) and <stem>.key.pem (PKCS#8); return both paths."""
        c = os.path.join(directory, f"{stem}.pem")
        k = os.path.join(directory, f"{stem}.key.pem")
        with open(c, "wb") as f:
            f.write(self.cert_pem)
        with open(k, "wb") as f:
            f.write(self.key_pem)
        return c, k


class CA:
    def __init__(self, cn: str = "pushgate e2e test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = utcnow()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256()))

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def write(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.cert_pem)
        return path

    def issue(self, cn: str, *, server: bool = False, dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), org: str | None = None, uid: str | None = None,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              days: float = 365, rsa_key: bool = True) -> Issued:
        """A leaf certificate. Client certificates get an RSA-2048 key by default (APNs
        certificates are RSA); the server one gets P-256."""
        now = utcnow()
        nb = not_before or (now - dt.timedelta(hours=1))
        na = not_after or (now + dt.timedelta(days=days))
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
               if (rsa_key and not server) else ec.generate_private_key(ec.SECP256R1()))
        b = (x509.CertificateBuilder()
             .subject_name(_name(cn, org, uid)).issuer_name(self.cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(nb).not_valid_after(na)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 self.key.public_key()), critical=False)
             .add_extension(x509.ExtendedKeyUsage(
                 [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                 critical=False))
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i))
                                                 for i in ips]
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return Issued(key, b.sign(self.key, hashes.SHA256()))


# --- APNs token-auth keys ---------------------------------------------------------------------
@dataclass
class P8Key:
    key: ec.EllipticCurvePrivateKey
    key_id: str
    team_id: str

    @property
    def pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def public_key(self):
        return self.key.public_key()

    def write(self, path: str) -> str:
        with open(path, "wb") as f:
            f.write(self.pem)
        return path


def new_p8(key_id: str, team_id: str) -> P8Key:
    """An APNs auth key as Apple hands it out: PKCS#8 PEM of a P-256 key."""
    return P8Key(ec.generate_private_key(ec.SECP256R1()), key_id, team_id)


# --- PKCS#12 with the openssl CLI ------------------------------------------------------------
def make_p12(issued: Issued, directory: str, stem: str, password: str,
             legacy: bool = False) -> bytes:
    """Export cert+key as .p12 with `openssl pkcs12 -export` (OpenSSL 3 default: PBES2/AES-256;
    `legacy`: pbeWithSHA1And40BitRC2-CBC, as macOS Keychain exports). Returns the file bytes."""
    c, k = issued.write(directory, stem)
    out = os.path.join(directory, f"{stem}.p12")
    cmd = [OPENSSL, "pkcs12", "-export", "-in", c, "-inkey", k, "-passout", f"pass:{password}",
           "-out", out, "-name", stem]
    if legacy:
        cmd.insert(3, "-legacy")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}")
    with open(out, "rb") as f:
        return f.read()


def p12_encryption(path: str, password: str, legacy: bool = False) -> str:
    """`openssl pkcs12 -info` line describing the certificate bag's encryption."""
    cmd = [OPENSSL, "pkcs12", "-in", path, "-info", "-noout", "-passin", f"pass:{password}"]
    if legacy:
        cmd.append("-legacy")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    for line in (r.stdout + r.stderr).splitlines():
        if line.startswith("PKCS7 Encrypted data:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"no encryption line in openssl pkcs12 -info output: {r.stdout}{r.stderr}")
