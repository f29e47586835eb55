"""Schemathesis against the running API (``make fuzz-api``, scripts/fuzz_api.sh): requests generated
from the API's own ``/openapi.json`` (valid and invalid ones), sent to the real binary over TCP with
a private PostgreSQL and Redis behind it, authenticated as a seeded user. Checks: no 5xx, status
codes, content types, headers and bodies as documented.

    python tests/reliability/fuzz_api_run.py [--max-examples N] [--workers W] [--seed S]

The number of requests each route received is read from the API's own ``/metrics`` (before and
after), so the count is what the server saw, not what the fuzzer meant to send. Exits non-zero when
schemathesis reports a failure or a route with parameters received fewer than ``--min-requests``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from reliability.stack import private_stack, request_counts, seed, token  # type: ignore
else:
    from .stack import private_stack, request_counts, seed, token

# Everything Schemathesis can check except the two that judge the API's documented choices:
# - positive_data_acceptance: a schema-valid postId that names no post is a documented 404;
# - negative_data_rejection: unknown query parameters are documented as ignored.
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "missing_required_header",
    "unsupported_method",
    "ignored_auth",
])
# The routes whose inputs are generated (the others take no input: one request covers them).
FUZZED_ROUTES = ("GET /api/feeds", "POST /api/track", "POST /api/track/batch")


def run(max_examples: int, workers: int = 1, seed_value: int | None = None,
        binary: Path | None = None, log=print, max_time: int | None = None) -> dict:
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        st = Path(shutil.which("st") or "st")
    work = Path(tempfile.mkdtemp(prefix="feedrank-fuzz-api-"))
    load = lambda url: seed(url, users=10, posts_per_user=10, recommend=30)  # noqa: E731
    try:
        with private_stack(binary, load, BODY_LIMIT_BYTES="65536") as stack:
            return _fuzz(stack, st, work, max_examples, workers, seed_value, max_time, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fuzz(stack, st: Path, work: Path, max_examples: int, workers: int, seed_value: int | None,
          max_time: int | None, log) -> dict:
    api, data = stack.api, stack.data
    # Real post ids for most generated events: with only random UUIDs every event is a 404 and
    # schemathesis stops early on the operation ("missing test data"), never reaching the store.
    posts = ", ".join(f'"{p}"' for p in data.posts)
    (work / "schemathesis.toml").write_text(
        f"[dictionaries.posts]\nvalues = [{posts}]\n\n[parameters]\n"
        '"body.postId" = { dictionary = "posts", probability = 0.7 }\n'
        '"body.events[*].postId" = { dictionary = "posts", probability = 0.7 }\n'
    )
    before = request_counts(api.base)
    cmd = [
        str(st), "run", api.base + "/openapi.json",
        "--checks", CHECKS,
        "--max-examples", str(max_examples),
        "--workers", str(workers),
        "--header", f"Authorization: Bearer {token(data.users[0], ttl=86400)}",
        "--request-timeout", "20",
        "--suppress-health-check", "all",
        "--report", "junit", "--report-dir", str(work),
        "--no-color",
    ]
    if seed_value is not None:
        cmd += ["--seed", str(seed_value)]
    if max_time is not None:
        cmd += ["--max-time", str(max_time)]
    log("fuzz-api: " + " ".join(c if "Bearer" not in c else "Authorization: Bearer ..."
                                for c in cmd))
    # Run from the scratch directory: schemathesis keeps a cache in ./.schemathesis/.
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work,
                          env=dict(os.environ, SCHEMATHESIS_HOOKS=""))
    seen = request_counts(api.base) - before
    counts: dict[str, int] = {}
    statuses: dict[str, int] = {}
    for (method, route, status), n in sorted(seen.items()):
        counts[f"{method} {route}"] = counts.get(f"{method} {route}", 0) + n
        statuses[status] = statuses.get(status, 0) + n
    report = {
        "max_examples": max_examples,
        "requests_by_route": {k: n for k, n in counts.items() if n},
        "requests_total": sum(counts.values()),
        "responses_by_status": statuses,
        "server_errors": sum(n for k, n in statuses.items() if k.startswith("5")),
        "schemathesis_exit": done.returncode,
        "schemathesis_tail": "\n".join(done.stdout.splitlines()[-40:]),
    }
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-examples", type=int,
                    default=int(os.environ.get("FUZZ_API_EXAMPLES", 2000)))
    ap.add_argument("--min-requests", type=int, default=None,
                    help="fewest requests each fuzzed route must receive (default: max-examples)")
    # One worker: with two, schemathesis 4.32 cut one of the operations running at the same time
    # short (52 requests of 2000 for POST /api/track), which the per-route count below catches.
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = run(args.max_examples, args.workers, args.seed)
    print(report.pop("schemathesis_tail"))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    floor = args.min_requests if args.min_requests is not None else args.max_examples
    short = {r: report["requests_by_route"].get(r, 0) for r in FUZZED_ROUTES
             if report["requests_by_route"].get(r, 0) < floor}
    problems = []
    if report["schemathesis_exit"] != 0:
        problems.append(f"schemathesis exited {report['schemathesis_exit']}")
    if report["server_errors"]:
        problems.append(f"{report['server_errors']} 5xx answers")
    if short:
        problems.append(f"routes with fewer than {floor} requests: {short}")
    if problems:
        print("FUZZ-API FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"fuzz-api passed: {report['requests_total']} requests, "
          + ", ".join(f"{r} {report['requests_by_route'][r]}" for r in FUZZED_ROUTES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
