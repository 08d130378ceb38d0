"""Render the Kubernetes manifests of one pipeline from its config (`streamforge deploy render`).

`render(cfg, options)` builds plain dicts, one object per file:

- `configmap.yaml`: the pipeline YAML as the pod sees it: `recovery.dir` on the
  state volume, `checkpoints.dir` / `savepoints.dir` in S3 (a `file://` store
  would die with the pod), relative file-sink paths moved onto the volume.
- `statefulset.yaml`: one pod running the supervisor
  (`streamforge run PIPELINE --config /etc/streamforge/pipeline.yaml`), a
  volumeClaimTemplate for the Bytewax recovery partitions, an initContainer
  that restores from the store (`streamforge restore latest`) when the volume
  holds no partitions (a new or replaced volume; partitions already on the
  volume are at least as new as any checkpoint, the supervisor resumes them),
  credentials from the Secret `<name>-credentials`, the manifest signing key
  from the Secret `<name>-signing-key` (required: the pod does not start
  without it), config overrides
  (`STREAMFORGE__SOURCE__URI=...`) from the optional Secret `<name>-env`,
  `/healthz` (liveness) and
  `/readyz` (readiness) on the metrics port, and a preStop hook that takes a
  savepoint (`streamforge savepoint create --name prestop`) while the flow still
  runs, as the Flink operator does before it cancels a job. When
  `savepoints.on-cancel` is on, the pod config moves that savepoint from the
  supervisor's SIGTERM handler to the preStop hook (so it is taken once);
  `terminationGracePeriodSeconds` covers `checkpoints.timeout` (the savepoint) +
  `recovery.stop-grace` (the stop) + a margin.
- `signing-secret.yaml.template`: that Secret with a placeholder, never a
  key: fill in a random key and apply it once (`kubectl apply -f DIR` skips
  it, so re-applying the manifests never resets the key; the supervisor
  refuses the placeholder). The pod config turns signed restore on:
  `security.require-signing-key: true` and `security.allow-unsigned: false`
  (restore refuses unsigned snapshots; set it true in the pipeline config to
  adopt a bucket of snapshots taken before signing was on).
- `service.yaml`: a headless Service (stable pod DNS, metrics ports).
- `podmonitor.yaml`: scrape the supervisor's `/metrics` and the Bytewax
  dataflow API's `/metrics` (checkpoint metrics live in the supervisor,
  source and DLQ metrics in the dataflow process).
- `prometheusrule.yaml`: the groups of `deploy/prometheus/*_rules.yaml`,
  unchanged (one shared object, `streamforge-rules`, for every pipeline).

`--replicas N` (N > 1) renders one Bytewax cluster of N processes, one per pod
(`streamforge_ops.cluster`): the pod ordinal is the process id (`--process-id
ordinal`), `--addresses` lists every pod's stable DNS name in the headless
Service (`<name>-K.<name>.<namespace>.svc:2101`, Timely's port), which publishes
not-ready addresses (a process is not ready until all its peers connected).
`podManagementPolicy: Parallel` starts every pod at once (OrderedReady would wait
for pod 0 to be ready, which needs the others); `updateStrategy: OnDelete`: a
rolling update would run two code versions in one cluster, so a new version is
rolled out with `streamforge upgrade` or by deleting every pod (each pod's
SIGTERM ends the cluster; process 0 takes the one savepoint, `savepoints.on-cancel`,
the others answer it: `recovery.cluster_checkpoint`). Each pod keeps its share of
the partitions (`recovery.placement`) on its own volume, `<recovery.dir>/proc-K`;
its supervisor restores that share from the store when the volume holds none (no
initContainer: the share depends on the process count) and answers process 0's
coordinated checkpoints. Probes are per pod. The partition count bounds the useful
pod count: a pod beyond `recovery.partitions` holds no state.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dataflows.config import Config
from streamforge_ops.settings import SIGNING_KEY_PLACEHOLDER, Settings, read_settings

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_NAMESPACE",
    "RULES_DIR",
    "Manifest",
    "RenderError",
    "RenderOptions",
    "RenderResult",
    "cluster_addresses",
    "dump_manifest",
    "render",
    "write_manifests",
]

DEFAULT_IMAGE = "streamforge:0.1.0"
DEFAULT_NAMESPACE = "streamforge"
RULES_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
RULE_FILES = ("recording_rules.yaml", "alert_rules.yaml")
STATE_MOUNT = "/var/lib/streamforge"
CONFIG_MOUNT = "/etc/streamforge"
CONFIG_FILE = f"{CONFIG_MOUNT}/pipeline.yaml"
DATAFLOW_API_PORT = 3030
CLUSTER_PORT = 2101  # Timely's TCP exchange between the processes of a cluster
UID = 10001
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class RenderError(ValueError):
    """The config or the options cannot make a deployment; the message says why."""


@dataclass(frozen=True)
class RenderOptions:
    """What the command line can change about the rendered objects."""

    image: str = DEFAULT_IMAGE
    namespace: str = DEFAULT_NAMESPACE
    replicas: int = 1
    store: str | None = None  # s3:// URL for checkpoints and savepoints
    storage: str = "10Gi"  # size of the recovery volume
    rules_dir: Path = RULES_DIR


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object and the file it is written to."""

    filename: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


@dataclass
class RenderResult:
    """The rendered objects, plus notes for the operator (defaults taken, caveats)."""

    pipeline: str
    namespace: str
    manifests: list[Manifest]
    notes: list[str] = field(default_factory=list)
    # the bucket lifecycle configuration expiring unpinned savepoints (s3-lifecycle.json)
    lifecycle: dict[str, Any] | None = None
    # objects to fill in and apply by hand, once (not in the stream, skipped by `kubectl apply -f DIR`)
    templates: list[Manifest] = field(default_factory=list)


def render(cfg: Config, options: RenderOptions | None = None) -> RenderResult:
    """Build every object of the pipeline in `cfg`; raises RenderError or ConfigError."""
    options = options or RenderOptions()
    settings = read_settings(cfg)
    _check_options(options)
    name = _object_name(settings.pipeline)
    notes: list[str] = []
    pod_cfg = pod_config(cfg, settings, options.store, notes, processes=options.replicas)
    config_text = yaml.safe_dump(pod_cfg, sort_keys=False)
    labels = _labels(settings, name)
    meta = {"namespace": options.namespace, "labels": labels}
    notes.extend(_local_endpoint_notes(cfg, name))
    notes.append(
        f"the Secret {name}-signing-key is rendered as signing-secret.yaml.template: replace "
        f"the placeholder with a random key (`openssl rand -hex 32`) and apply it once; the pod "
        "does not start without it"
    )
    if pod_cfg["security"]["allow-unsigned"]:
        notes.append("security.allow-unsigned is true: restore accepts unsigned snapshots")
    if options.replicas > settings.recovery.partitions:
        notes.append(
            f"--replicas {options.replicas} is above recovery.partitions "
            f"{settings.recovery.partitions}: the pods beyond it hold no recovery partitions "
            "(the partition count, fixed at init, bounds workers, processes and pods)"
        )
    if cfg.str("source.type", "") == "file" and not cfg.bool("source.tail", False):
        notes.append(
            "source.type is file with tail: false: the pod exits when the input ends and "
            "Kubernetes restarts it (resuming at the end); use tail: true or a streaming source"
        )
    manifests = [
        Manifest("configmap.yaml", _configmap(name, meta, config_text)),
        Manifest("statefulset.yaml", _statefulset(name, meta, settings, options, config_text)),
        Manifest("service.yaml", _service(name, meta, settings, options.replicas > 1)),
        Manifest("podmonitor.yaml", _podmonitor(name, meta)),
        Manifest("prometheusrule.yaml", _prometheusrule(options)),
    ]
    templates = [Manifest("signing-secret.yaml.template", _signing_secret(name, meta))]
    return RenderResult(settings.pipeline, options.namespace, manifests, notes,
                        _lifecycle(pod_cfg["savepoints"]["dir"], settings), templates)


def _lifecycle(savepoints_url: str, settings: Settings) -> dict[str, Any] | None:
    """recovery.savepoint.lifecycle_configuration for the pod's savepoint store (None
    without savepoints.max-age)."""
    from urllib.parse import urlparse

    from recovery.savepoint import lifecycle_configuration

    max_age = settings.savepoints.max_age_s
    if not max_age:
        return None
    return lifecycle_configuration(urlparse(savepoints_url).path, settings.pipeline, max_age)


def pod_config(
    cfg: Config, settings: Settings, store: str | None, notes: list[str], processes: int = 1
) -> dict[str, Any]:
    """The pipeline config as the pod runs it (see module doc); `processes` pods of a cluster
    keep `savepoints.on-cancel` in the supervisors (process 0 coordinates the one savepoint)."""
    data = copy.deepcopy(cfg.data)
    data.setdefault("recovery", {})["dir"] = f"{STATE_MOUNT}/recovery"
    ck_url = settings.checkpoints.store.url
    default_store = store or (ck_url if ck_url.startswith("s3://") else None)
    if default_store is None:
        default_store = f"s3://streamforge-state/{settings.pipeline}"
        notes.append(
            f"checkpoints.dir is {ck_url!r}, not s3://: the pod uses {default_store} "
            "(choose another with --store)"
        )
    for section, url in (("checkpoints", ck_url), ("savepoints", settings.savepoints.store.url)):
        target = store or (url if url.startswith("s3://") else default_store)
        data.setdefault(section, {})["dir"] = target
    if settings.savepoints.on_cancel and processes <= 1:
        # The preStop hook takes the stop savepoint (see module doc).
        data["savepoints"]["on-cancel"] = False
    security = data.setdefault("security", {})
    security["require-signing-key"] = True  # signed restore is the deployment's default
    security.setdefault("allow-unsigned", False)
    for section in ("sink", "dlq"):
        sec = data.get(section)
        if isinstance(sec, dict) and sec.get("type") == "file":
            for key, value in sec.items():
                if (key == "path" or key.endswith("-path")) and isinstance(value, str):
                    if not PurePosixPath(value).is_absolute():
                        sec[key] = f"{STATE_MOUNT}/out/{PurePosixPath(value).name}"
    return data


def _local_endpoint_notes(cfg: Config, name: str) -> list[str]:
    """Service addresses that cannot work inside a pod (localhost)."""
    notes = []
    for section in ("source", "sink", "dlq"):
        for key in ("uri", "brokers"):
            value = str(cfg.raw(f"{section}.{key}", ""))
            if "localhost" in value or "127.0.0.1" in value:
                env = f"STREAMFORGE__{section.upper()}__{key.upper()}"
                notes.append(
                    f"{section}.{key} is {value!r}: set {env} in the Secret {name}-env "
                    "(credentials belong there too, not in the ConfigMap)"
                )
    return notes


def _check_options(options: RenderOptions) -> None:
    if options.replicas < 0:
        raise RenderError(f"--replicas must be >= 0, got {options.replicas}")
    if options.store is not None and not options.store.startswith("s3://"):
        raise RenderError(
            f"--store must be an s3:// URL, got {options.store!r}: a file:// store is lost with the pod"
        )
    if not _DNS_LABEL.match(options.namespace) or len(options.namespace) > 63:
        raise RenderError(f"--namespace {options.namespace!r} is not a valid Kubernetes name")
    if not options.image or any(c.isspace() for c in options.image):
        raise RenderError(f"--image {options.image!r} is not a container image reference")


def _object_name(pipeline: str) -> str:
    name = "streamforge-" + pipeline.lower().replace("_", "-")
    # StatefulSet pods get "-N" and a controller-revision label: keep the name <= 52 chars.
    if not _DNS_LABEL.match(name) or len(name) > 52:
        raise RenderError(
            f"pipeline.name {pipeline!r} does not make a Kubernetes name ({name!r}): use letters, "
            "digits, '-' or '_', at most 40 characters"
        )
    return name


def _labels(settings: Settings, name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "streamforge",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "pipeline",
        "app.kubernetes.io/part-of": "streamforge",
        "streamforge.io/pipeline": settings.pipeline,
    }


def _selector(meta: dict[str, Any]) -> dict[str, str]:
    labels = meta["labels"]
    keys = ("app.kubernetes.io/name", "app.kubernetes.io/instance")
    return {k: labels[k] for k in keys}


def _configmap(name: str, meta: dict[str, Any], config_text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config", **meta},
        "data": {"pipeline.yaml": config_text},
    }


def _signing_secret(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-signing-key", **meta},
        "type": "Opaque",
        "stringData": {"signing-key": SIGNING_KEY_PLACEHOLDER},
    }


def _env(settings: Settings, name: str) -> list[dict[str, Any]]:
    def from_secret(var: str, key: str, secret: str = f"{name}-credentials",
                    optional: bool = True) -> dict[str, Any]:
        ref = {"name": secret, "key": key, "optional": optional}
        return {"name": var, "valueFrom": {"secretKeyRef": ref}}

    return [
        {"name": "STREAMFORGE_CONFIG", "value": CONFIG_FILE},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "BYTEWAX_DATAFLOW_API_ENABLED", "value": "true"},
        {"name": "BYTEWAX_DATAFLOW_API_PORT", "value": str(DATAFLOW_API_PORT)},
        from_secret("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
        from_secret("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key"),
        from_secret("AWS_SESSION_TOKEN", "aws-session-token"),
        from_secret(settings.security.signing_key_env, "signing-key", f"{name}-signing-key", False),
    ]


_RESTORE_SCRIPT = f"""\
if ls {STATE_MOUNT}/recovery/part-*.sqlite3 >/dev/null 2>&1; then
  echo "recovery partitions found on the volume: the supervisor resumes them"
else
  exec streamforge restore latest --config {CONFIG_FILE} --force
fi
"""


def _prestop(settings: Settings, processes: int) -> dict[str, Any]:
    """The preStop savepoint (savepoints.on-cancel), as a container `lifecycle`; none for a
    cluster (its supervisors take the one savepoint on SIGTERM, see module doc)."""
    if not settings.savepoints.on_cancel or processes > 1:
        return {}
    command = ["streamforge", "savepoint", "create", "--config", CONFIG_FILE, "--name", "prestop"]
    return {"lifecycle": {"preStop": {"exec": {"command": command}}}}


def _statefulset(
    name: str, meta: dict[str, Any], settings: Settings, options: RenderOptions, config_text: str
) -> dict[str, Any]:
    mounts = [
        {"name": "state", "mountPath": STATE_MOUNT},
        {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
    ]
    env = _env(settings, name)
    env_from = [{"secretRef": {"name": f"{name}-env", "optional": True}}]
    container_security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    cluster = options.replicas > 1
    grace = math.ceil(settings.recovery.stop_grace_s + settings.checkpoints.timeout_s + 30)
    if cluster:  # process 0 drains its checkpoint, then the savepoint; the others wait for it
        grace += math.ceil(settings.savepoints.timeout_s)
    port = settings.metrics.port
    init = {
        "name": "restore",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", _RESTORE_SCRIPT],
        "env": env,
        "envFrom": env_from,
        "volumeMounts": mounts,
        "securityContext": container_security,
    }
    main = {
        "name": "streamforge",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["streamforge"],
        "args": ["run", settings.pipeline, "--config", CONFIG_FILE, *_cluster_args(name, options)],
        "env": [*env, *_cluster_env(name, options)],
        "envFrom": env_from,
        "ports": [
            {"name": "metrics", "containerPort": port, "protocol": "TCP"},
            {"name": "dataflow-api", "containerPort": DATAFLOW_API_PORT, "protocol": "TCP"},
            *([{"name": "cluster", "containerPort": CLUSTER_PORT, "protocol": "TCP"}]
              if cluster else []),
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "initialDelaySeconds": 30,
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        **_prestop(settings, options.replicas),
        "resources": {
            "requests": {"cpu": f"{250 * settings.workers}m", "memory": "512Mi"},
            "limits": {"memory": "1Gi"},
        },
        "volumeMounts": mounts,
        "securityContext": container_security,
    }
    config_sha = hashlib.sha256(config_text.encode()).hexdigest()
    selector = _selector(meta)
    pod_init = {} if cluster else {"initContainers": [init]}  # a cluster pod's supervisor restores
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, **meta},
        "spec": {
            "serviceName": name,
            "replicas": options.replicas,
            "podManagementPolicy": "Parallel" if cluster else "OrderedReady",
            "updateStrategy": {"type": "OnDelete" if cluster else "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": meta["labels"],
                    "annotations": {
                        "streamforge.io/config-sha256": config_sha,
                        "kubectl.kubernetes.io/default-container": "streamforge",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    **pod_init,
                    "containers": [main],
                    "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "state", "labels": selector},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": options.storage}},
                    },
                }
            ],
        },
    }


def cluster_addresses(name: str, namespace: str, processes: int) -> str:
    """Every pod's Timely address by ordinal: its DNS name in the headless Service."""
    return ";".join(f"{name}-{k}.{name}.{namespace}.svc:{CLUSTER_PORT}" for k in range(processes))


def _cluster_args(name: str, options: RenderOptions) -> list[str]:
    """`streamforge run` flags of a cluster pod (`streamforge_ops.cluster.cluster_from_args`)."""
    if options.replicas <= 1:
        return []
    return ["--process-id", "ordinal",
            "--addresses", cluster_addresses(name, options.namespace, options.replicas)]


def _cluster_env(name: str, options: RenderOptions) -> list[dict[str, str]]:
    """The same for the commands an operator runs in a pod (`kubectl exec ... streamforge
    savepoint create`: process 0 coordinates it, `cluster_state.pod_taker`)."""
    args = _cluster_args(name, options)
    if not args:
        return []
    return [{"name": "STREAMFORGE_PROCESS_ID", "value": args[1]},
            {"name": "STREAMFORGE_ADDRESSES", "value": args[3]}]


def _service(name: str, meta: dict[str, Any], settings: Settings, cluster: bool) -> dict[str, Any]:
    ports = [
        {"name": "metrics", "port": settings.metrics.port, "targetPort": "metrics"},
        {"name": "dataflow-api", "port": DATAFLOW_API_PORT, "targetPort": "dataflow-api"},
    ]
    spec: dict[str, Any] = {"clusterIP": "None", "selector": _selector(meta), "ports": ports}
    if cluster:  # the peers must resolve each other before any of them is ready
        ports.append({"name": "cluster", "port": CLUSTER_PORT, "targetPort": "cluster"})
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, **meta}, "spec": spec}


def _podmonitor(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    endpoint = {"path": "/metrics", "interval": "30s"}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, **meta},
        "spec": {
            "selector": {"matchLabels": _selector(meta)},
            "podMetricsEndpoints": [
                {"port": "metrics", **endpoint},
                {"port": "dataflow-api", **endpoint},
            ],
        },
    }


def load_rule_groups(rules_dir: Path) -> list[dict[str, Any]]:
    """The groups of the recording and alert rule files, in that order."""
    groups: list[dict[str, Any]] = []
    for fname in RULE_FILES:
        path = rules_dir / fname
        if not path.is_file():
            raise RenderError(f"rule file {path} not found (pass --rules DIR)")
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    return groups


def _prometheusrule(options: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "streamforge-rules",
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/name": "streamforge", "app.kubernetes.io/part-of": "streamforge"},
        },
        "spec": {"groups": load_rule_groups(options.rules_dir)},
    }


class _Dumper(yaml.SafeDumper):
    """Block style (`|`) for multi-line strings, so scripts and configs stay readable; no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_manifest(manifest: Manifest, pipeline: str) -> str:
    """The file text: a do-not-edit header and the object as YAML."""
    header = (
        f"# Rendered by `streamforge deploy render` for pipeline {pipeline!r}.\n"
        "# Do not edit: change the pipeline config (or deploy/prometheus) and render again.\n"
    )
    if manifest.filename.endswith(".template"):
        header = (
            f"# Rendered by `streamforge deploy render` for pipeline {pipeline!r}: a TEMPLATE.\n"
            "# Copy it, replace the placeholder with a random key (openssl rand -hex 32), apply\n"
            "# it once. Never commit the filled-in copy; the supervisor refuses the placeholder.\n"
        )
    return header + yaml.dump(manifest.obj, Dumper=_Dumper, sort_keys=False, width=100)


def write_manifests(result: RenderResult, out_dir: Path) -> list[Path]:
    """Write one file per object into `out_dir` (created if missing), then the templates.

    Returns the paths of `result.manifests` (in order).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in [*result.manifests, *result.templates]:
        path = out_dir / m.filename
        path.write_text(dump_manifest(m, result.pipeline))
        paths.append(path)
    return paths[: len(result.manifests)]
