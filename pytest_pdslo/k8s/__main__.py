"""``python -m pytest_pdslo.k8s``: render manifests, sweep leftovers, run a load job.

```
python -m pytest_pdslo.k8s render suites/gpt-oss-120b.yaml --out k8s-out [--namespace NS] [--k8s cluster.yaml]
python -m pytest_pdslo.k8s teardown --namespace NS [--context C] [--suite NAME] [--yes]
python -m pytest_pdslo.k8s loadjob          # inside a load Job (reads $PDSLO_LOADJOB)
```
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import PdsloError


def _render(args: argparse.Namespace) -> int:
    from ..suite import load_suite
    from .render import render_suite, write_rendered
    from .spec import load_override

    override = load_override(args.k8s)
    total = 0
    for path in args.suites:
        loaded = load_suite(path)
        rendered = render_suite(loaded.suite, override, args.namespace)
        if args.deployment:
            rendered = [r for r in rendered if r.deployment in args.deployment]
        written = write_rendered(rendered, args.out)
        total += len(written)
        for r, p in zip(rendered, written):
            shape = ", ".join(f"{s.role} tp{s.tp}x{s.replicas}" for s in r.servers)
            print(f"{p}: {r.deployment} ({r.layout}: {shape}), {len(r.objects)} objects")
            for w in r.warnings:
                print(f"  warning: {w}")
    print(f"{total} file(s) written under {args.out}; apply one with: kubectl apply -n NS -f FILE")
    return 0


def _teardown(args: argparse.Namespace) -> int:
    from .driver import KubeDriver
    from .render import MANAGED_BY, SUITE_LABEL, label_value

    selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
    if args.suite:
        selector += f",{SUITE_LABEL}={label_value(args.suite)}"
    driver = KubeDriver.from_kubeconfig(args.context, progress=lambda m: print(m, file=sys.stderr))
    refs = driver.sweep(args.namespace, selector)
    if not refs:
        print(f"nothing of pytest-pdslo in namespace {args.namespace!r} ({selector})")
        return 0
    for ref in refs:
        print(f"{'deleting' if args.yes else 'would delete'} {ref}")
    if not args.yes:
        print("run again with --yes to delete")
        return 0
    problems = driver.delete(refs)
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_pdslo.k8s", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write the Kubernetes manifests of a suite's deployments")
    r.add_argument("suites", nargs="+", help="suite YAML files")
    r.add_argument("--out", required=True, help="directory: <out>/<suite>/<deployment>.<layout>.yaml")
    r.add_argument("--namespace", default=None, help="set metadata.namespace (default: none, kubectl -n decides)")
    r.add_argument("--k8s", default=None, help="YAML file with a k8s: block overriding the suites' (cluster specifics)")
    r.add_argument("--deployment", action="append", help="only this deployment (repeatable)")
    t = sub.add_parser("teardown", help="delete what pytest-pdslo left in a namespace (after a killed run)")
    t.add_argument("--namespace", required=True)
    t.add_argument("--context", default=None)
    t.add_argument("--suite", default=None, help="only this suite's objects")
    t.add_argument("--yes", action="store_true", help="delete (default: list only)")
    sub.add_parser("loadjob", help="run one point's load inside a Job (reads $PDSLO_LOADJOB)")
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            return _render(args)
        if args.command == "teardown":
            return _teardown(args)
        from .loadjob import main as loadjob_main

        return loadjob_main()
    except PdsloError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
