"""`streamforge deploy render` and the manifests in deploy/k8s.

Built-in kinds (ConfigMap, StatefulSet, Service) are validated offline with
kubernetes-validate (strict: unknown fields rejected). It ships no schemas for
the prometheus-operator CRDs, so for PodMonitor and PrometheusRule the test
asserts that kubernetes-validate reports the missing schema and then checks
their structure itself (selectors match the pod, ports exist, the rule groups
are deploy/prometheus's and pass `promtool check rules`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from dataflows.config import ConfigError, load_config
from streamforge_ops.cli import main
from streamforge_ops.cluster import cluster_from_args
from streamforge_ops.deploy_render import (
    RenderOptions,
    RenderResult,
    dump_manifest,
    load_rule_groups,
    render,
)
from streamforge_ops.settings import SIGNING_KEY_PLACEHOLDER, read_settings
from tests.conftest import REQUIRE_TOOLS

ROOT = Path(__file__).resolve().parents[1]
ORDERS = ROOT / "config" / "orders.yaml"
STATIC = ROOT / "deploy" / "k8s"
K8S_VERSION = kubernetes_validate.latest_version()
CRD_KINDS = {"PodMonitor", "PrometheusRule"}

KAFKA_CONFIG = """\
pipeline: {name: customers_cdc, workers: 2, code-version: "7"}
source: {type: kafka, brokers: "kafka:9092", topics: [customers]}
sink: {type: kafka, brokers: "kafka:9092", topic: customers-out, mode: exactly-once}
dlq: {type: kafka, brokers: "kafka:9092", topic: customers-dlq}
recovery: {dir: /data/recovery, partitions: 8, stop-grace: 40s}
checkpoints: {dir: "s3://prod-state/checkpoints", interval: 30s, timeout: 90s}
savepoints: {dir: "s3://prod-state/savepoints"}
security: {signing-key-env: SF_KEY}
metrics: {port: 9500}
"""


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renders must not pick up STREAMFORGE__* overrides of the test environment."""
    for name in list(os.environ):
        if name.upper().startswith("STREAMFORGE__"):
            monkeypatch.delenv(name)


def _objects(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {m.kind: m.obj for m in result.manifests}


def _kafka(tmp_path: Path, **opts: Any) -> RenderResult:
    path = tmp_path / "customers.yaml"
    path.write_text(KAFKA_CONFIG)
    return render(load_config(path, environ={}), RenderOptions(**opts))


def _orders() -> RenderResult:
    return render(load_config(ORDERS, environ={}))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["deploy", "render", *argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- the checked-in manifests ------------------------------------------------------------


def test_cli_render_of_orders_matches_deploy_k8s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, "--config", str(ORDERS), "--output", str(tmp_path), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pipeline"] == "orders"
    assert {o["kind"] for o in summary["objects"]} == {
        "ConfigMap", "StatefulSet", "Service", "PodMonitor", "PrometheusRule"
    }  # fmt: skip
    assert any("s3://streamforge-state/orders" in n for n in summary["notes"])
    rendered = {p.name: p.read_text() for p in [*tmp_path.glob("*.yaml"), *tmp_path.glob("*.template")]}
    static = {p.name: p.read_text() for p in [*STATIC.glob("*.yaml"), *STATIC.glob("*.template")]}
    assert "signing-secret.yaml.template" in static
    assert rendered.keys() == static.keys()
    stale = [name for name in rendered if rendered[name] != static[name]]
    assert stale == [], (
        f"deploy/k8s is out of date ({stale}): run "
        "`streamforge deploy render --config config/orders.yaml --output deploy/k8s`"
    )


def test_static_manifests_pass_kubernetes_validate_cli() -> None:
    files = sorted(str(p) for p in [*STATIC.glob("*.yaml"), *STATIC.glob("*.template")])
    out = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", *files],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # ConfigMap, StatefulSet, Service, the signing Secret template; CRDs: no schema
    assert out.stdout.count("passed") == 4


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["kafka", *sorted(p.name for p in (ROOT / "config").glob("*.yaml"))])
def test_rendered_manifests_validate_offline(which: str, tmp_path: Path) -> None:
    """The test config above and every bundled config/*.yaml render to valid objects."""
    if which == "kafka":
        result = _kafka(tmp_path, namespace="prod", image="r.io/sf:7")
    else:
        result = render(load_config(ROOT / "config" / which, environ={}))
    for m in [*result.manifests, *result.templates]:
        doc = yaml.safe_load(dump_manifest(m, result.pipeline))
        assert doc == m.obj  # the dumped text is the object
        if m.kind in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        else:
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{m.filename}: {exc.message} at {list(exc.path)}")
        assert doc["metadata"]["namespace"] == result.namespace


def test_podmonitor_and_service_select_the_pods_and_their_ports() -> None:
    objs = _objects(_orders())
    pod = objs["StatefulSet"]["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    labels = pod["metadata"]["labels"]
    for selector in (
        objs["StatefulSet"]["spec"]["selector"]["matchLabels"],
        objs["PodMonitor"]["spec"]["selector"]["matchLabels"],
        objs["Service"]["spec"]["selector"],
    ):
        assert selector.items() <= labels.items()
    endpoints = objs["PodMonitor"]["spec"]["podMetricsEndpoints"]
    assert {e["port"] for e in endpoints} == set(ports) == {"metrics", "dataflow-api"}
    assert all(e["path"] == "/metrics" for e in endpoints)
    assert objs["Service"]["spec"]["clusterIP"] == "None"
    assert {p["targetPort"] for p in objs["Service"]["spec"]["ports"]} == set(ports)
    assert objs["StatefulSet"]["spec"]["serviceName"] == objs["Service"]["metadata"]["name"]


def test_prometheusrule_carries_the_rule_files(tmp_path: Path) -> None:
    rule = _objects(_orders())["PrometheusRule"]
    assert rule["spec"]["groups"] == load_rule_groups(ROOT / "deploy" / "prometheus")
    alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 7
    promtool = shutil.which("promtool")
    if promtool is None:
        if REQUIRE_TOOLS:
            pytest.fail("promtool is required (CI/STREAMFORGE_REQUIRE_TOOLS set)")
        return  # structure checked above; the promtool check runs where promtool exists
    path = tmp_path / "from-prometheusrule.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# --- what the pod runs -------------------------------------------------------------------


def test_statefulset_runs_supervisor_with_restore_volume_secrets_and_probes(tmp_path: Path) -> None:
    objs = _objects(_kafka(tmp_path))
    sts = objs["StatefulSet"]
    spec = sts["spec"]["template"]["spec"]
    main_c, init = spec["containers"][0], spec["initContainers"][0]
    assert sts["metadata"]["name"] == "streamforge-customers-cdc"
    assert main_c["command"] + main_c["args"] == [
        "streamforge", "run", "customers_cdc", "--config", "/etc/streamforge/pipeline.yaml"
    ]  # fmt: skip
    assert "streamforge restore latest --config /etc/streamforge/pipeline.yaml" in init["command"][-1]
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    for c in (main_c, init):
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts == {claim: "/var/lib/streamforge", "config": "/etc/streamforge"}
        env = {e["name"]: e for e in c["env"]}
        for var, key in (("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
                         ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key")):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("streamforge-customers-cdc-credentials", key)
        # the signing key is required: no Secret, no pod (signed restore by default)
        assert env["SF_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "streamforge-customers-cdc-signing-key", "key": "signing-key", "optional": False
        }  # fmt: skip
        assert env["BYTEWAX_DATAFLOW_API_ENABLED"]["value"] == "true"
        assert c["envFrom"] == [{"secretRef": {"name": "streamforge-customers-cdc-env", "optional": True}}]
    assert main_c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main_c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert {p["name"]: p["containerPort"] for p in main_c["ports"]}["metrics"] == 9500
    # preStop savepoint (up to checkpoints.timeout 90s) + stop (stop-grace 40s) must fit
    assert main_c["lifecycle"]["preStop"]["exec"]["command"] == [
        "streamforge", "savepoint", "create", "--config", "/etc/streamforge/pipeline.yaml",
        "--name", "prestop",
    ]  # fmt: skip
    assert spec["terminationGracePeriodSeconds"] >= 40 + 90
    # ...and the supervisor does not take a second one on SIGTERM.
    pod_cfg = yaml.safe_load(objs["ConfigMap"]["data"]["pipeline.yaml"])
    assert pod_cfg["savepoints"]["on-cancel"] is False
    assert spec["volumes"][0]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]


def test_signing_secret_template_and_signed_restore_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Secret is rendered as a template (placeholder, never a key) the pod requires;
    the pod config requires a key and refuses unsigned snapshots."""
    result = _kafka(tmp_path)
    (secret,) = result.templates
    assert secret.filename == "signing-secret.yaml.template"
    assert (secret.obj["kind"], secret.name) == ("Secret", "streamforge-customers-cdc-signing-key")
    assert secret.obj["stringData"] == {"signing-key": SIGNING_KEY_PLACEHOLDER}
    assert "Secret" not in {m.kind for m in result.manifests}  # not in `--output -`
    assert any("signing-secret.yaml.template" in n for n in result.notes)
    text = _objects(result)["ConfigMap"]["data"]["pipeline.yaml"]
    assert yaml.safe_load(text)["security"] == {
        "signing-key-env": "SF_KEY", "require-signing-key": True, "allow-unsigned": False
    }  # fmt: skip
    security = read_settings(load_config(_write(tmp_path / "pod.yaml", text), environ={})).security
    assert (security.require_signing_key, security.allow_unsigned) == (True, False)
    monkeypatch.delenv("SF_KEY", raising=False)
    with pytest.raises(ConfigError, match="security.require-signing-key is on but \\$SF_KEY"):
        security.signing_key()
    monkeypatch.setenv("SF_KEY", SIGNING_KEY_PLACEHOLDER)
    with pytest.raises(ConfigError, match="placeholder"):
        security.signing_key()
    monkeypatch.setenv("SF_KEY", "a real key")
    assert security.signing_key() == b"a real key"
    # Adopting snapshots taken before signing was on: allowed explicitly, and said so.
    cfg = _write(tmp_path / "p.yaml", KAFKA_CONFIG.replace(
        "security: {signing-key-env: SF_KEY}", "security: {signing-key-env: SF_KEY, allow-unsigned: true}"))
    adopted = render(load_config(cfg, environ={}))
    assert yaml.safe_load(_objects(adopted)["ConfigMap"]["data"]["pipeline.yaml"])["security"][
        "allow-unsigned"] is True
    assert any("allow-unsigned is true" in n for n in adopted.notes)


def test_configmap_holds_the_pod_config(tmp_path: Path) -> None:
    objs = _objects(_kafka(tmp_path))
    text = objs["ConfigMap"]["data"]["pipeline.yaml"]
    pod_cfg = yaml.safe_load(text)
    settings = read_settings(load_config(_write(tmp_path / "pod.yaml", text), environ={}))
    assert settings.recovery.dir == Path("/var/lib/streamforge/recovery")
    assert settings.recovery.partitions == 8
    assert settings.checkpoints.store.url == "s3://prod-state/checkpoints"  # s3 kept as is
    assert settings.savepoints.store.url == "s3://prod-state/savepoints"
    assert pod_cfg["sink"] == yaml.safe_load(KAFKA_CONFIG)["sink"]
    assert not any("STREAMFORGE__" in n for n in _kafka(tmp_path).notes)  # kafka:9092 is fine
    annotations = objs["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["streamforge.io/config-sha256"] == hashlib.sha256(text.encode()).hexdigest()


def test_localhost_endpoints_are_flagged(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", KAFKA_CONFIG.replace("kafka:9092", "localhost:9092"))
    notes = render(load_config(path, environ={})).notes
    for env in ("STREAMFORGE__SOURCE__BROKERS", "STREAMFORGE__SINK__BROKERS", "STREAMFORGE__DLQ__BROKERS"):
        assert any(env in n and "streamforge-customers-cdc-env" in n for n in notes), env


def test_orders_pod_config_moves_state_to_volume_and_s3() -> None:
    result = _orders()
    pod_cfg = yaml.safe_load(_objects(result)["ConfigMap"]["data"]["pipeline.yaml"])
    assert pod_cfg["checkpoints"]["dir"] == pod_cfg["savepoints"]["dir"] == "s3://streamforge-state/orders"
    assert pod_cfg["sink"]["path"] == "/var/lib/streamforge/out/table.jsonl"
    assert pod_cfg["dlq"]["path"] == "/var/lib/streamforge/out/dlq.jsonl"
    assert pod_cfg["source"]["path"] == "data/orders.jsonl"  # in the image, under WORKDIR /app
    assert any("tail: false" in n for n in result.notes)


@pytest.mark.parametrize("has_partitions", [False, True])
def test_restore_init_script_restores_only_onto_an_empty_volume(
    tmp_path: Path, has_partitions: bool
) -> None:
    """Runs the initContainer's shell script for real; `streamforge` is a stand-in
    script on PATH that records its arguments (no cluster or store here)."""
    init = _objects(_orders())["StatefulSet"]["spec"]["template"]["spec"]["initContainers"][0]
    script = init["command"][-1].replace("/var/lib/streamforge", str(tmp_path / "state"))
    (tmp_path / "state" / "recovery").mkdir(parents=True)
    if has_partitions:
        (tmp_path / "state" / "recovery" / "part-0.sqlite3").write_bytes(b"")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "streamforge"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/called\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(init["command"][:-1] + [script], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    called = tmp_path / "called"
    if has_partitions:
        assert not called.exists()
        assert "resumes them" in out.stdout
    else:
        assert called.read_text().split() == [
            "restore", "latest", "--config", "/etc/streamforge/pipeline.yaml", "--force"
        ]  # fmt: skip


def test_options_change_image_namespace_replicas_and_store(tmp_path: Path) -> None:
    result = _kafka(tmp_path, image="r.io/sf:7", namespace="prod", replicas=0, store="s3://other/x")
    objs = _objects(result)
    sts = objs["StatefulSet"]
    assert sts["spec"]["replicas"] == 0
    assert {c["image"] for c in sts["spec"]["template"]["spec"]["containers"]} == {"r.io/sf:7"}
    assert all(m.obj["metadata"]["namespace"] == "prod" for m in result.manifests)
    pod_cfg = yaml.safe_load(objs["ConfigMap"]["data"]["pipeline.yaml"])
    assert pod_cfg["checkpoints"]["dir"] == pod_cfg["savepoints"]["dir"] == "s3://other/x"


# --- a cluster: one Bytewax process per pod -------------------------------------------------


def test_replicas_3_is_one_cluster_of_3_pods(tmp_path: Path) -> None:
    """The StatefulSet's ordinal is the process id, the headless Service gives the addresses,
    every pod starts at once with its own volume and probes, restores its own share (its
    supervisor, no initContainer) and the one cancel savepoint stays with the supervisors."""
    result = _kafka(tmp_path, namespace="prod", replicas=3)
    objs = _objects(result)
    for m in result.manifests:
        if m.kind not in CRD_KINDS:
            kubernetes_validate.validate(yaml.safe_load(dump_manifest(m, result.pipeline)),
                                         K8S_VERSION, strict=True)
    sts, svc = objs["StatefulSet"], objs["Service"]
    spec = sts["spec"]
    assert (spec["replicas"], spec["podManagementPolicy"], spec["updateStrategy"]) == (
        3, "Parallel", {"type": "OnDelete"})
    assert spec["serviceName"] == svc["metadata"]["name"] == "streamforge-customers-cdc"
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["state"]
    pod = spec["template"]["spec"]
    (main_c,) = pod["containers"]
    assert "initContainers" not in pod and "lifecycle" not in main_c
    # stop (40s) + process 0's in-flight checkpoint (90s) + the savepoint (90s) must fit
    assert pod["terminationGracePeriodSeconds"] >= 40 + 90 + 90
    args = main_c["args"]
    assert args[:4] == ["run", "customers_cdc", "--config", "/etc/streamforge/pipeline.yaml"]
    assert args[4:7] == ["--process-id", "ordinal", "--addresses"]
    addresses = args[7]
    assert addresses == ";".join(
        f"streamforge-customers-cdc-{k}.streamforge-customers-cdc.prod.svc:2101" for k in range(3))
    # what the pod's `streamforge run` makes of them (streamforge_ops.cluster)
    c = cluster_from_args(None, "ordinal", addresses, env={}, hostname="streamforge-customers-cdc-2")
    assert c is not None and (c.processes, c.local) == (3, (2,))
    env = {e["name"]: e.get("value") for e in main_c["env"]}  # for `kubectl exec` commands too
    assert cluster_from_args(None, None, None, env=env, hostname="streamforge-customers-cdc-2") == c
    assert {p["name"]: p["containerPort"] for p in main_c["ports"]}["cluster"] == 2101
    assert main_c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main_c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["cluster"] == 2101
    pod_cfg = yaml.safe_load(objs["ConfigMap"]["data"]["pipeline.yaml"])
    assert pod_cfg["savepoints"].get("on-cancel", True) is True
    assert not any("above recovery.partitions" in n for n in result.notes)
    assert any("above recovery.partitions 8" in n for n in _kafka(tmp_path, replicas=9).notes)


def test_one_replica_is_unchanged_by_the_cluster_options(tmp_path: Path) -> None:
    sts = _objects(_kafka(tmp_path))["StatefulSet"]["spec"]
    assert (sts["podManagementPolicy"], sts["updateStrategy"]["type"]) == ("OrderedReady", "RollingUpdate")
    assert "--process-id" not in sts["template"]["spec"]["containers"][0]["args"]


# --- the command line ---------------------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["deploy", "render", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--output", "--image", "--namespace", "--replicas", "--json", "--store"):
        assert flag in out


def test_output_dash_prints_one_yaml_stream(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "--config", str(ORDERS), "--output", "-")
    assert code == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(out)]
    assert kinds == ["ConfigMap", "StatefulSet", "Service", "PodMonitor", "PrometheusRule"]


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        (None, [], "does not exist"),
        ("pipeline: {name: x}\ncheckpoints: {interval: soon}\n", [], "checkpoints.interval"),
        ("source: {type: file}\n", [], "pipeline.name"),
        ("pipeline: {name: Bad.Name}\n", [], "Kubernetes name"),
        ("pipeline: {name: x}\n", ["--replicas", "-1"], "--replicas must be >= 0"),
        ("pipeline: {name: x}\n", ["--store", "file:///tmp/s"], "s3:// URL"),
        ("pipeline: {name: x}\n", ["--namespace", "Not_Valid"], "--namespace"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str | None, args: list[str], message: str
) -> None:
    path = tmp_path / "pipeline.yaml"
    if config is not None:
        path.write_text(config)
    code, out, err = _cli(capsys, "--config", str(path), "--output", str(tmp_path / "out"), *args)
    assert code == 2
    assert message in err
    assert err.startswith("streamforge: ")
    assert not (tmp_path / "out").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_dockerfile_matches_the_manifests() -> None:
    """No container runtime here: check the Dockerfile against what the manifests expect."""
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
            assert all((ROOT / s).exists() for s in sources), line
    sts = _objects(_orders())["StatefulSet"]["spec"]["template"]["spec"]
    ports = {str(p["containerPort"]) for p in sts["containers"][0]["ports"]}
    expose = next(line for line in text.splitlines() if line.startswith("EXPOSE"))
    assert ports <= set(expose.split()[1:])
    assert f"USER {sts['securityContext']['runAsUser']}:" in text
    assert 'ENTRYPOINT ["streamforge"]' in text
    assert sts["containers"][0]["image"] == "streamforge:0.1.0"
    assert "docker build -t streamforge:0.1.0" in text
