#!/usr/bin/env python3
"""Keeps the alerting rules' copies in step with deploy/prometheus/alerts.yml, their one source.

    python3 deploy/prometheus/sync.py                      # rewrite the PrometheusRule from alerts.yml
    python3 deploy/prometheus/sync.py --runbook-base URL   # first point every runbook_url at URL

URL is where your copy of docs/runbooks.md is served (each alert adds `#its-section`). The
PrometheusRule of deploy/kubernetes/components/prometheus-operator holds alerts.yml's groups as
they are; tests/api/deploy.rs fails when the two differ. Needs nothing but Python 3."""

import argparse
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
RULES = HERE / "alerts.yml"
TESTS = HERE / "alerts_test.yml"
OPERATOR = HERE.parent / "kubernetes" / "components" / "prometheus-operator" / "prometheusrule.yaml"
URL = re.compile(r'(runbook_url: ")([^"#]+)(#)')

HEADER = """\
# Generated from deploy/prometheus/alerts.yml by `python3 deploy/prometheus/sync.py`: edit that
# file, then run the script. tests/api/deploy.rs fails when the groups here differ from it.
# Your Prometheus picks PrometheusRules by its ruleSelector: add the label it asks for in your
# overlay (e.g. `release: kube-prometheus-stack`).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: usage-gate
spec:
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runbook-base", help="where docs/runbooks.md is served, e.g. https://wiki.example.com/usage-gate/runbooks")
    args = parser.parse_args()
    if args.runbook_base:
        base = args.runbook_base.split("#")[0]
        if not re.match(r"^https?://", base):
            parser.error("--runbook-base must be an absolute http(s) URL")
        for path in (RULES, TESTS):
            path.write_text(URL.sub(lambda m: m.group(1) + base + m.group(3), path.read_text()))
    text = RULES.read_text()
    groups = text[text.index("\ngroups:") + 1 :]
    OPERATOR.write_text(HEADER + "".join("  " + line if line.strip() else line for line in groups.splitlines(True)))
    print(f"wrote {OPERATOR.relative_to(HERE.parent.parent)}")


if __name__ == "__main__":
    main()
