"""STAND-IN for Kubeflow Trainer v2.3.0's TrainJob status server and the cluster's token issuer.

With the ``TrainJobStatus`` feature gate on, the Trainer controller serves HTTPS on port 10443 of
its webhook Service and the trainer pods POST their progress there (``pkg/statusserver/server.go``,
read at tag v2.3.0, commit 658725b). Neither the controller nor a kube-apiserver's TokenRequest
API runs here (crdserver has no core API, so no ServiceAccounts and no TokenRequest), so this
module plays both, against the REAL API server:

* :class:`TokenIssuer` signs service-account tokens (RS256 JWTs with a key made per test
  session, the claims a projected token has: ``iss``, ``sub``, ``aud``, ``exp``, ``kubernetes.io``)
  for the stand-in kubelet's projected volume, and verifies them as the server's
  ``projectedServiceAccountTokenAuthorizer`` does with go-oidc (``auth.go``): signature, issuer,
  expiry, the audience ``trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}/status``,
  and the token's namespace claim equal to the job's;
* :class:`StatusServer` answers as ``server.go`` does, with its ``metav1.Status`` bodies: 403
  ``Forbidden`` (a token not for this job), 422 ``Invalid payload`` (a body Go's decoder rejects),
  200 echoing a body without ``trainerStatus`` (no-op), 413 ``Payload too large`` (over 64 kB),
  404 ``Not found`` (another path or method), and otherwise applies the status to the REAL API
  server's ``status`` subresource with server-side apply (field manager ``trainer-status``,
  forced), so the upstream CRD's schema and its CEL rule judge every payload: the API server's
  refusal comes back as 422 with its message, a missing job as 404 ``Train job not found``;
* :func:`issue_certificates` makes the CA and the server certificate (``cryptography``) for the
  Service's DNS name, which the pod verifies with the CA file the controller mounts.

The server listens on a Unix socket, which the sandboxed pods reach through a relay on their own
loopback (``tests/k8s/sandbox.py``: the Service's DNS name maps to it), and on a loopback TCP
port for the tests' own requests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, TCPConnector, web

from tests.k8s.harness import ApiServer, free_port

#: The webhook Service the plugin puts in the URL (defaults.go: WebhookServiceName, the operator's
#: namespace) and the status server's port (StatusServer.Port's default).
SERVICE_HOST = "kubeflow-trainer-controller-manager.kubeflow-system.svc"
SERVICE_PORT = 10443
#: What trainjobstatus.go injects into the trainer container, and where.
URL_ENV, CA_CERT_ENV, TOKEN_ENV = (
    "KUBEFLOW_TRAINER_SERVER_URL",
    "KUBEFLOW_TRAINER_SERVER_CA_CERT",
    "KUBEFLOW_TRAINER_SERVER_TOKEN",
)
MOUNT_PATH = "/var/run/secrets/kubeflow/trainer"
TOKEN_VOLUME = "kubeflow-trainer-token"
TOKEN_EXPIRY_SECONDS = 3600
ISSUER = "https://kubernetes.default.svc.cluster.local"
MAX_BODY = 1 << 16  # server.go maxBodySize
_PATH = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs/([^/]+)/status$")
_INT32 = (-(2**31), 2**31 - 1)


def audience(namespace: str, name: str) -> str:
    """utils.go TokenAudience."""
    return f"trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status"


def status_path(namespace: str, name: str) -> str:
    """utils.go StatusUrl."""
    return f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status"


# --- certificates and tokens ------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    cert: Path
    key: Path


def issue_certificates(directory: Path, hosts: tuple[str, ...] = (SERVICE_HOST, "localhost")) -> Certificates:
    """A self-signed CA and a server certificate it signed for ``hosts`` and 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in trainer status CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(host) for host in hosts] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = Certificates(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    paths.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class TokenIssuer:
    """STAND-IN for the API server's service-account token issuer (TokenRequest), RS256."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def mint(
        self,
        namespace: str,
        audiences: list[str],
        *,
        expires_in: int = TOKEN_EXPIRY_SECONDS,
        service_account: str = "default",
        pod: str = "",
    ) -> str:
        """A projected service-account token as the kubelet gets it for a pod's volume."""
        import jwt

        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": now + expires_in,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
                **({"pod": {"name": pod, "uid": str(uuid.uuid4())}} if pod else {}),
            },
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": "stand-in"})

    def authorize(self, header: str, namespace: str, name: str) -> bool:
        """auth.go Authorize: a bearer token signed here, unexpired, for this job's audience and namespace."""
        import jwt

        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            return False
        try:
            claims = jwt.decode(
                parts[1],
                self._key.public_key(),
                algorithms=["RS256"],
                audience=audience(namespace, name),
                issuer=ISSUER,
            )
        except jwt.PyJWTError:
            return False
        return (claims.get("kubernetes.io") or {}).get("namespace") == namespace


# --- the status server ---------------------------------------------------------------------------


def _status(code: int, reason: str, message: str) -> web.Response:
    """server.go badRequest: a metav1.Status as Go's json encoder writes it (no kind, empty metadata)."""
    body = {"metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}
    return web.Response(status=code, text=json.dumps(body) + "\n", content_type="application/json")


class InvalidPayload(ValueError):
    """What Go's decoder refuses to put into an UpdateTrainJobStatusRequest."""


def _int32(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not _INT32[0] <= value <= _INT32[1]:
        raise InvalidPayload(f"cannot unmarshal {value!r} into an int32")
    return value


def _time(value: Any) -> str | None:
    """metav1.Time: null is the zero time; a string must be RFC 3339. Marshalled back in UTC to the second."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidPayload("lastUpdatedTime is not a string")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        raise InvalidPayload(f"cannot parse {value!r} as RFC 3339")
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _string(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidPayload("a metric's name and value are strings")
    return value


def decode_trainer_status(body: bytes) -> dict[str, Any] | None:
    """The request's ``trainerStatus`` as ``toApplyConfig`` builds it, None when the body has none.

    Go's decoder: unknown fields are ignored, numbers must fit their int32 fields, a metric's
    missing name or value is ``""``, and ``lastUpdatedTime`` is always sent (null when missing).
    """
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None
    if request is None:
        return None
    if not isinstance(request, dict):
        raise InvalidPayload("not an object")
    status = request.get("trainerStatus")
    if status is None:
        return None
    if not isinstance(status, dict):
        raise InvalidPayload("trainerStatus is not an object")
    applied: dict[str, Any] = {}
    for key in ("progressPercentage", "estimatedRemainingSeconds"):
        if (value := _int32(status.get(key))) is not None:
            applied[key] = value
    metrics = status.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, list) or not all(isinstance(m, dict) or m is None for m in metrics):
            raise InvalidPayload("metrics is not a list of objects")
        items = [
            {"name": _string((m or {}).get("name")), "value": _string((m or {}).get("value"))}
            for m in metrics
        ]
        if items:
            applied["metrics"] = items
    applied["lastUpdatedTime"] = _time(status.get("lastUpdatedTime"))
    return applied


@dataclass(frozen=True)
class Received:
    """One request the server answered, for the tests to read (the token is not kept)."""

    namespace: str
    name: str
    code: int
    trainer_status: dict[str, Any] | None
    message: str = ""


class StatusServer:
    def __init__(self, api: ApiServer, tokens: TokenIssuer):
        self.api, self.tokens = api, tokens
        self.dir = Path(tempfile.mkdtemp(prefix="trainer-status-"))
        self.certificates = issue_certificates(self.dir / "tls")
        (self.dir / "socket").mkdir()  # its own directory: the sandbox mounts it for the relay
        self.socket = self.dir / "socket" / "status.sock"
        self.port = free_port()
        self.received: list[Received] = []
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

    @property
    def tcp_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def url(self, namespace: str, name: str) -> str:
        """The URL trainjobstatus.go injects: the Service's DNS name, its port, the job's path."""
        return f"https://{SERVICE_HOST}:{SERVICE_PORT}{status_path(namespace, name)}"

    def service(self) -> dict[str, Any]:
        """What the stand-in sandbox relays to: the Service's name and port in the pod, the socket here."""
        return {"host": SERVICE_HOST, "port": SERVICE_PORT, "socket": str(self.socket)}

    def accepted(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            r.trainer_status for r in self.received if (r.namespace, r.name, r.code) == (namespace, name, 200)
        ]

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> StatusServer:
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._setup())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True, name="trainer-status-server")
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("the stand-in status server did not start")
        return self

    def stop(self) -> None:
        """Stop serving (the socket goes: the pods' relay finds nobody, as with a server that is down)."""
        if self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self.socket.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def _setup(self) -> None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.certificates.cert, self.certificates.key)
        api_tls = ssl.create_default_context(cafile=self.api.ca_cert)
        self._session = ClientSession(connector=TCPConnector(ssl=api_tls))
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls).start()
        await web.UnixSite(self._runner, str(self.socket), ssl_context=tls).start()
        self.socket.chmod(0o777)  # the pod's UID connects through the relay, which runs as root

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        await self._session.close()

    # --- server.go ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return _status(404, "NotFound", "Not found")  # handleDefault
        namespace, name = match.groups()
        if (request.content_length or 0) > MAX_BODY:  # bodySizeLimitMiddleware
            return self._answer(namespace, name, _status(413, "RequestEntityTooLarge", "Payload too large"))
        if not self.tokens.authorize(request.headers.get("Authorization", ""), namespace, name):
            return self._answer(namespace, name, _status(403, "Forbidden", "Forbidden"))
        try:
            status = decode_trainer_status(await request.read())
        except InvalidPayload:
            return self._answer(namespace, name, _status(422, "Invalid", "Invalid payload"))
        if status is None:  # no trainerStatus: 200, nothing applied
            return self._answer(namespace, name, web.json_response({}), None)
        code, message = await self._apply(namespace, name, status)
        if code == 200:
            echo = {key: value for key, value in status.items() if value is not None}
            return self._answer(namespace, name, web.json_response({"trainerStatus": echo}), status)
        if code in (400, 422):
            return self._answer(namespace, name, _status(422, "Invalid", message), status, message)
        if code == 404:
            return self._answer(namespace, name, _status(404, "NotFound", "Train job not found"), status)
        return self._answer(namespace, name, _status(500, "InternalError", "Internal error"), status)

    def _answer(
        self,
        namespace: str,
        name: str,
        response: web.Response,
        status: dict[str, Any] | None = None,
        message: str = "",
    ) -> web.Response:
        self.received.append(Received(namespace, name, response.status, status, message))
        return response

    async def _apply(self, namespace: str, name: str, status: dict[str, Any]) -> tuple[int, str]:
        """Status().Apply(trainJob, ForceOwnership, FieldOwner("trainer-status")) on the real API server."""
        body = {
            "apiVersion": "trainer.kubeflow.org/v1alpha1",
            "kind": "TrainJob",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"trainerStatus": status},
        }
        async with self._session.patch(
            f"{self.api.url}{status_path(namespace, name)}",
            params={"fieldManager": "trainer-status", "force": "true"},
            data=json.dumps(body),
            headers={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
        ) as response:
            answer = await response.json(content_type=None)
            return response.status, (answer or {}).get("message", "")


# --- the controller's and the kubelet's part -----------------------------------------------------


def tls_config_map(job: dict[str, Any], ca_cert: bytes) -> dict[str, Any]:
    """trainjobstatus.go buildStatusServerCaCrtConfigMap: ``<job>-tls-config`` with the CA, owned by the job."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{meta['name']}-tls-config",
            "namespace": meta.get("namespace"),
            "ownerReferences": [
                {
                    "apiVersion": "trainer.kubeflow.org/v1alpha1",
                    "kind": "TrainJob",
                    "name": meta["name"],
                    "uid": meta.get("uid", ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "data": {"ca.crt": ca_cert.decode()},
    }


def inject(pod: dict[str, Any], container: str, namespace: str, name: str, url: str) -> None:
    """trainjobstatus.go EnforceMLPolicy: the three variables, the projected volume and its mount."""
    spec = pod["spec"]
    target = next(c for c in spec["containers"] if c["name"] == container)
    env = [e for e in target.get("env", []) if e["name"] not in (URL_ENV, CA_CERT_ENV, TOKEN_ENV)]
    target["env"] = [
        *env,
        {"name": URL_ENV, "value": url},
        {"name": CA_CERT_ENV, "value": f"{MOUNT_PATH}/ca.crt"},
        {"name": TOKEN_ENV, "value": f"{MOUNT_PATH}/token"},
    ]
    target.setdefault("volumeMounts", []).append(
        {"name": TOKEN_VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}
    )
    spec.setdefault("volumes", []).append(
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": audience(namespace, name),
                            "expirationSeconds": TOKEN_EXPIRY_SECONDS,
                            "path": "token",
                        }
                    },
                    {
                        "configMap": {
                            "name": f"{name}-tls-config",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                ]
            },
        }
    )
