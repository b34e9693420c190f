#!/usr/bin/env python3
"""Writes the inputs of the Envoy adapter's golden tests: config.json (two policies and two
outbound connections) and the *.request.json CheckRequests, with tokens signed by a throwaway
P-256 key that exists only here. The expected *.response.json files are written by the test
itself with FHIRGUARD_BLESS=1 and then reviewed by hand; see tests/adapter_golden.rs.

Re-running this makes new keys and tokens (so new request files) but the same responses."""
import base64, json, pathlib, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import crypt  # noqa: E402  (Python 3.11; removed in 3.13)
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives import hashes

HERE = pathlib.Path(__file__).parent
ISSUER, AUDIENCE = "https://idp.golden", "https://ehr.golden/fhir/r4"
FAR, PAST = 4102444800, 1000000000  # 2100-01-01, 2001-09-09


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


key = ec.generate_private_key(ec.SECP256R1())
pub = key.public_key().public_numbers()
jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "g1", "alg": "ES256", "use": "sig",
                  "x": b64(pub.x.to_bytes(32, "big")), "y": b64(pub.y.to_bytes(32, "big"))}]}


def token(scope, patient=None, exp=FAR, sub="app-1"):
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": exp, "iat": PAST, "scope": scope}
    if patient:
        claims["patient"] = patient
    head = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "g1"}).encode())
    body = b64(json.dumps(claims).encode())
    der = key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    return f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def basic(user, pw):
    return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()


htpasswd = "".join(f"{u}:{crypt.crypt(pw, '$6$golden' + u[:2])}\n"
                   for u, pw in [("alice", "alice-pw"), ("bob", "bob-pw")])
provider = {"name": "idp", "issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["ES256"],
            "clockSkewSeconds": 5, "jwks": {"refreshIntervalSeconds": 600, "document": json.dumps(jwks)}}
config = {
    "version": 1, "generation": 7,
    "policies": [
        {"namespace": "clinical", "name": "ehr", "hosts": ["ehr.golden"], "basePath": "/fhir/r4",
         "publicPaths": ["/metadata", "/.well-known/smart-configuration"], "unauthenticatedAccess": False,
         "authentication": {"combine": "AnyOf",
                            "basic": {"htpasswd": htpasswd, "access": [
                                {"users": ["bob"], "permission": "Read"},
                                {"users": ["*"], "permission": "ReadWrite"}]},
                            "jwt": {"tokenSources": ["Header"], "requireSubjectMatchesBasicUser": False,
                                    "providers": [provider]}},
         "authorization": {"smart": {"patientSearch": "Narrow"}},
         "smartConfiguration": {"issuer": ISSUER, "authorizationEndpoint": ISSUER + "/authorize",
                                "tokenEndpoint": ISSUER + "/token",
                                "capabilities": ["launch-standalone", "client-public"],
                                "scopes": ["openid", "fhirUser", "launch/patient"]}},
        {"namespace": "clinical", "name": "apps", "hosts": [], "basePath": "/apps/fhir",
         "publicPaths": [], "unauthenticatedAccess": False,
         "authentication": {"combine": "AnyOf",
                            "jwt": {"tokenSources": ["Header"], "requireSubjectMatchesBasicUser": False,
                                    "providers": [provider]}},
         "authorization": {"smart": {"patientSearch": "Reject"}}},
    ],
    "connections": [
        {"namespace": "clinical", "name": "partner", "url": "https://partner.golden/fhir",
         "auth": {"basic": {"username": "fhirguard", "password": "partner-secret"}}},
        {"namespace": "clinical", "name": "open", "url": "https://open.golden/fhir"},
    ],
}
(HERE / "config.json").write_text(json.dumps(config, indent=2) + "\n")

EHR = "ehr.golden"
patient_app = token("launch/patient patient/*.rs", "123")
writer_app = token("launch/patient patient/Observation.cruds patient/Patient.r", "123")
user_app = token("user/Observation.rs", None, sub="dr-who")
expired = token("patient/*.rs", "123", exp=PAST + 60)
obs_123 = json.dumps({"resourceType": "Observation", "status": "final",
                      "code": {"text": "heart rate"}, "subject": {"reference": "Patient/123"}})
obs_456 = json.dumps({"resourceType": "Observation", "status": "final",
                      "code": {"text": "heart rate"}, "subject": {"reference": "Patient/456"},
                      "performer": [{"reference": "Patient/123"}]})

# name: (method, host, path, headers, body, context extensions, header_map instead of headers)
cases = {
    "basic-read-allowed": ("GET", EHR, "/fhir/r4/Patient/1", {"authorization": basic("alice", "alice-pw"),
        "x-fhirguard-user": "forged", "X-FhirGuard-Patient": "forged-too"}, None, {}, False),
    "basic-write-with-read-refused": ("DELETE", EHR, "/fhir/r4/Patient/1", {"authorization": basic("bob", "bob-pw")}, None, {}, False),
    "basic-wrong-password": ("GET", EHR, "/fhir/r4/Patient/1", {"authorization": basic("alice", "nope")}, None, {}, False),
    "no-credentials": ("GET", EHR, "/fhir/r4/Patient/1", {}, None, {}, False),
    "public-path": ("GET", EHR, "/fhir/r4/metadata", {}, None, {}, False),
    "smart-configuration-served": ("GET", EHR, "/fhir/r4/.well-known/smart-configuration", {}, None, {}, False),
    "dot-segment-refused": ("GET", EHR, "/fhir/r4/Patient/%2e%2e/admin", {"authorization": basic("alice", "alice-pw")}, None, {}, False),
    "unknown-host": ("GET", "elsewhere.golden", "/fhir/r4/Patient/1", {"authorization": basic("alice", "alice-pw")}, None, {}, False),
    "token-own-patient-search": ("GET", EHR, "/fhir/r4/Observation?patient=123&code=8867-4", {"authorization": "Bearer " + patient_app}, None, {}, False),
    "token-other-patient-refused": ("GET", EHR, "/fhir/r4/Observation?patient=456", {"authorization": "Bearer " + patient_app}, None, {}, False),
    "token-search-narrowed": ("GET", EHR, "/fhir/r4/Observation?code=8867-4", {"authorization": "Bearer " + patient_app}, None, {}, False),
    "token-write-without-write-scope": ("POST", EHR, "/fhir/r4/Observation", {"authorization": "Bearer " + patient_app,
        "content-type": "application/fhir+json", "content-length": str(len(obs_123))}, obs_123, {}, False),
    "token-create-in-own-chart": ("POST", EHR, "/fhir/r4/Observation", {"authorization": "Bearer " + writer_app,
        "content-type": "application/fhir+json", "content-length": str(len(obs_123)), "prefer": "return=representation"}, obs_123, {}, False),
    "token-create-in-other-chart": ("POST", EHR, "/fhir/r4/Observation", {"authorization": "Bearer " + writer_app,
        "content-type": "application/fhir+json", "content-length": str(len(obs_456))}, obs_456, {}, False),
    "token-partial-body-refused": ("POST", EHR, "/fhir/r4/Observation", {"authorization": "Bearer " + writer_app,
        "content-type": "application/fhir+json", "content-length": str(len(obs_123) + 100)}, obs_123, {}, False),
    "token-expired": ("GET", EHR, "/fhir/r4/Observation?patient=123", {"authorization": "Bearer " + expired}, None, {}, False),
    "token-malformed": ("GET", EHR, "/fhir/r4/Observation?patient=123", {"authorization": "Bearer not.a.jwt"}, None, {}, False),
    "user-token-read": ("GET", EHR, "/fhir/r4/Observation/9", {"authorization": "Bearer " + user_app}, None, {}, False),
    "policy-by-extension": ("GET", "anything.golden", "/apps/fhir/Observation?patient=123", {"authorization": "Bearer " + patient_app}, None,
        {"fhirguard.dev/policy": "clinical/apps"}, False),
    "policy-extension-unknown": ("GET", EHR, "/fhir/r4/Patient/1", {"authorization": basic("alice", "alice-pw")}, None,
        {"fhirguard.dev/policy": "clinical/nope"}, False),
    "basic-on-bearer-only-policy": ("GET", "anything.golden", "/apps/fhir/Patient/123", {"authorization": basic("alice", "alice-pw")}, None,
        {"fhirguard.dev/policy": "clinical/apps"}, False),
    "raw-header-map": ("GET", EHR, "/fhir/r4/Patient/1", {"Authorization": basic("alice", "alice-pw"), "x-fhirguard-user": "forged"}, None, {}, True),
    "outbound-basic": ("GET", "partner.golden", "/fhir/Patient/1", {"authorization": "Bearer from-the-workload"}, None,
        {"fhirguard.dev/connection": "clinical/partner"}, False),
    "outbound-no-auth": ("GET", "open.golden", "/fhir/Patient/1", {"authorization": "Basic c2VjcmV0"}, None,
        {"fhirguard.dev/connection": "clinical/open"}, False),
    "outbound-unknown": ("GET", "x.golden", "/fhir/Patient/1", {}, None, {"fhirguard.dev/connection": "clinical/nope"}, False),
}
for old in HERE.glob("*.request.json"):
    old.unlink()
for name, (method, host, path, headers, body, ext, raw) in cases.items():
    http = {"method": method, "host": host, "path": path}
    if raw:
        http["headerMap"] = [{"key": k, "rawValue": v} for k, v in headers.items()]
    else:
        http["headers"] = headers
    if body is not None:
        http["body"] = body
    req = {"http": http}
    if ext:
        req["contextExtensions"] = ext
    (HERE / f"{name}.request.json").write_text(json.dumps(req, indent=2) + "\n")
print(f"wrote config.json and {len(cases)} requests")
