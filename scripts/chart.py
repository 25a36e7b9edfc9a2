#!/usr/bin/env python3
"""Renders and lints charts/apikey-rotator with Helm's own engine (helm-python-sdk embeds Helm's
Go SDK; no helm binary needed).

  scripts/chart.py render [--values FILE] [--set k=v ...] [--namespace NS] [--name NAME]
      prints the rendered manifests as one YAML stream (exit 1 on a schema or template error)
  scripts/chart.py check
      lints the chart, renders the default and namespaced values, and checks that a bad values
      file is refused by values.schema.json
"""
import argparse
import os
import sys

import helm_python as helm

NAMESPACED = {"rbac": {"scope": "namespaces", "watchNamespaces": ["sirius", "scanners"]}}
CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "charts", "apikey-rotator")


def render(values, name="apikey-rotator", namespace="apikey-rotator-system"):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values=values, name=name, namespace=namespace, is_install=True)
    docs = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        body = manifests[path].strip()
        if body:
            docs.append(f"# Source: {path}\n{body}")
    return "\n---\n".join(docs) + "\n"


def parse_values(args):
    values = {}
    if args.values:
        with open(args.values) as f:
            values = helm.values_from_yaml(f.read())
    for expression in args.set or []:
        merge(values, helm.parse_set_string(expression))
    return values


def merge(into, new):
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def check():
    failures = []
    for label, values in [("default", None), ("namespaced", NAMESPACED)]:
        lint = helm.lint(CHART, values, strict=True, namespace="apikey-rotator-system")
        for m in lint.get("messages", []):
            print(f"lint ({label}): severity {m.get('severity')}: {m.get('path')}: {m.get('error')}")
        # Helm's severities: 1 info, 2 warning, 3 error.
        if lint.get("errors") or any(m.get("severity", 0) >= 2 for m in lint.get("messages", [])):
            failures.append(f"helm lint ({label}) reported warnings or errors")
    for label, values in [
        ("default values", {}),
        ("namespaced mode", NAMESPACED),
        ("everything on", {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True},
                           "grafanaDashboard": {"enabled": True}, "replicaCount": 3}),
    ]:
        try:
            out = render(values)
            print(f"render ({label}): ok, {out.count('apiVersion:')} objects")
        except helm.HelmError as e:
            failures.append(f"render ({label}) failed: {e}")
    for label, bad in [
        ("unknown key", {"replicas": 2}),
        ("bad scope", {"rbac": {"scope": "everywhere"}}),
        ("namespaces without a list", {"rbac": {"scope": "namespaces"}}),
        ("zero replicas", {"replicaCount": 0}),
        ("bad log format", {"operator": {"logFormat": "xml"}}),
    ]:
        try:
            render(bad)
            failures.append(f"bad values ({label}) were accepted")
        except helm.HelmError as e:
            print(f"bad values ({label}): refused: {' '.join(str(e).split())[:200]}")
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render")
    r.add_argument("--values")
    r.add_argument("--set", action="append")
    r.add_argument("--namespace", default="apikey-rotator-system")
    r.add_argument("--name", default="apikey-rotator")
    sub.add_parser("check")
    args = parser.parse_args()
    if args.command == "check":
        sys.exit(check())
    try:
        sys.stdout.write(render(parse_values(args), args.name, args.namespace))
    except helm.HelmError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
