"""`streamforge deploy render`: write the Kubernetes manifests of a pipeline.

Renders a StatefulSet (supervisor + restore initContainer + recovery volume),
a ConfigMap with the pipeline YAML as the pod runs it, a headless Service, a
PodMonitor and a PrometheusRule (from deploy/prometheus) into --output, one
file per object (see streamforge_ops.deploy_render). `deploy/k8s/` holds the
output for config/orders.yaml: `streamforge deploy render --config
config/orders.yaml --output deploy/k8s`. `--output -` prints one YAML stream.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dataflows.config import ConfigError, load_config, resolve_config_path
from streamforge_ops.cli import CliError
from streamforge_ops.deploy_render import (
    DEFAULT_IMAGE,
    DEFAULT_NAMESPACE,
    RULES_DIR,
    RenderError,
    RenderOptions,
    dump_manifest,
    render,
    write_manifests,
)
from streamforge_ops.output import emit, progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="render Kubernetes manifests for a pipeline",
                       description=__doc__.split("\n", 1)[1].strip())
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    r = actions.add_parser(
        "render",
        help="write StatefulSet, ConfigMap, Service, PodMonitor, PrometheusRule",
        description="Render the Kubernetes manifests of the pipeline in --config into --output.",
    )
    r.add_argument("--config", metavar="PIPELINE_YAML", help="pipeline config YAML (default: $STREAMFORGE_CONFIG)")
    r.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="directory to write the manifests into ('-' prints them to stdout)")
    r.add_argument("--image", default=DEFAULT_IMAGE, help=f"container image (default {DEFAULT_IMAGE})")
    r.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE,
                   help=f"Kubernetes namespace (default {DEFAULT_NAMESPACE})")
    r.add_argument("--replicas", type=int, default=1,
                   help="pods (default 1; 0 = stopped); N > 1: one Bytewax cluster of N processes, "
                        "one per pod")
    r.add_argument("--store", metavar="S3_URL",
                   help="s3:// store for checkpoints and savepoints (default: the config's, "
                        "if s3://, else s3://streamforge-state/PIPELINE)")
    r.add_argument("--storage", default="10Gi", help="size of the recovery volume (default 10Gi)")
    r.add_argument("--rules", type=Path, default=RULES_DIR, metavar="DIR",
                   help="directory of recording_rules.yaml and alert_rules.yaml")
    r.add_argument("--json", action="store_true", help="machine-readable summary")
    r.set_defaults(func=_render)


def _render(args: argparse.Namespace) -> int:
    try:
        config = resolve_config_path(args.config, None)  # the one resolver of every command
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    options = RenderOptions(
        image=args.image,
        namespace=args.namespace,
        replicas=args.replicas,
        store=args.store,
        storage=args.storage,
        rules_dir=args.rules,
    )
    try:
        result = render(load_config(config), options)
    except RenderError as exc:
        raise CliError(str(exc)) from None
    for note in result.notes:
        progress(f"note: {note}")
    if args.output == "-":
        sys.stdout.write("---\n".join(dump_manifest(m, result.pipeline) for m in result.manifests))
        return 0
    paths = write_manifests(result, Path(args.output))
    lifecycle = None
    if result.lifecycle is not None:  # for `aws s3api put-bucket-lifecycle-configuration`
        lifecycle = Path(args.output) / "s3-lifecycle.json"
        lifecycle.write_text(json.dumps(result.lifecycle, indent=2) + "\n")
    objects = [
        {"kind": m.kind, "name": m.name, "file": str(path)}
        for m, path in zip(result.manifests, paths, strict=True)
    ]
    summary = {
        "pipeline": result.pipeline,
        "namespace": result.namespace,
        "output": str(args.output),
        "objects": objects,
        "notes": result.notes,
        "lifecycle": str(lifecycle) if lifecycle else None,
    }
    text = "\n".join(f"wrote {o['file']} ({o['kind']} {o['name']})" for o in objects)
    if lifecycle:
        text += f"\nwrote {lifecycle} (S3 lifecycle: expire unpinned savepoints)"
    emit(summary, as_json=args.json, text=text)
    return 0
