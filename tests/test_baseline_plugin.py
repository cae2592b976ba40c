"""Baselines end to end, run as a user runs them (pytester, the virtual-time simulator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pytest_pdslo.sim.target  # noqa: F401  imported once here, not again in every in-process run

pytest_plugins = ["pytester"]

# small and fast on the ``sim`` target (virtual time): 5 items, 40 requests each
MINI = """
name: mini
model: openai/gpt-oss-120b
hardware: mi300x
deployments:
  agg-tp8: {tp: 8}
  agg-tp4: {tp: 4}
slo:
  ttft_ms: {p90: 5000}
  tpot_ms: {median: 500}
benchmarks:
  prefill: {deployments: [agg-tp8], input_len: 512, concurrency: 4, requests: 40}
  decode: {deployments: [agg-tp8], context_len: 512, output_len: 32, concurrency: [4, 8], requests: 40}
  serving: {input_len: 512, output_len: 32, concurrency: 4, requests: 40, input_len_spread: 0.2}
"""
IDS = [
    "prefill[agg-tp8-in512-c4]",
    "decode[agg-tp8-ctx512-c4]",
    "decode[agg-tp8-ctx512-c8]",
    "serving[agg-tp8-in512-out32-c4]",
    "serving[agg-tp4-in512-out32-c4]",
]
# hypothesis' plugin would import (and assertion-rewrite) hypothesis again in every in-process run
SIM = ["--pdslo-target", "sim", "-p", "no:cacheprovider", "-p", "no:hypothesispytest"]
BASELINE = Path("baselines/sim-mi300x/mini.json")


@pytest.fixture
def mini(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites" / "mini.yaml").write_text(MINI)
    return pytester


def doc(p: pytest.Pytester) -> dict:
    return json.loads((p.path / BASELINE).read_text())


def save(p: pytest.Pytester, d: dict) -> None:
    (p.path / BASELINE).write_text(json.dumps(d, indent=2, sort_keys=True))


def test_update_then_compare_passes(mini: pytest.Pytester) -> None:
    result = mini.runpytest(*SIM)
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    assert "baselines/sim-mi300x/mini.json: 5 no baseline" in out
    assert "record missing entries with --pdslo-update-baselines" in out
    assert not (mini.path / BASELINE).exists()

    result = mini.runpytest("--pdslo-update-baselines", *SIM)
    result.assert_outcomes(passed=5)
    assert "updated: baselines/sim-mi300x/mini.json: 5 written (0 changed, 5 new, 0 unchanged), 0 pruned" in result.stdout.str()
    d = doc(mini)
    assert d["suite"] == "mini" and d["env"] == "sim-mi300x" and sorted(d["entries"]) == sorted(IDS)
    e = d["entries"]["serving[agg-tp8-in512-out32-c4]"]
    assert set(e["samples"]) == {"ttft_ms", "tpot_ms", "e2el_ms"} and e["requests"] == 40
    fp = e["fingerprint"]
    assert fp["target"] == "sim" and fp["simulated"] is True and fp["gpu"] == "mi300x" and fp["gpus"] == 8
    assert fp["pdslo_version"] and fp["suite_sha256"] and fp["recorded_at"]
    assert "tpot_ms" not in d["entries"]["prefill[agg-tp8-in512-c4]"]["samples"]  # one token: no TPOT
    text = (mini.path / BASELINE).read_text()

    result = mini.runpytest(*SIM)
    result.assert_outcomes(passed=5)
    assert "baselines/sim-mi300x/mini.json: 5 unchanged" in result.stdout.str()

    # a refresh of an unchanged run is not a diff at all (recorded_at included)
    result = mini.runpytest("--pdslo-update-baselines", *SIM)
    assert "up to date: baselines/sim-mi300x/mini.json: 5 written (0 changed, 0 new, 5 unchanged), 0 pruned" in result.stdout.str()
    assert (mini.path / BASELINE).read_text() == text


def test_a_worse_run_fails_with_a_regression_table(mini: pytest.Pytester) -> None:
    mini.runpytest("--pdslo-update-baselines", *SIM).assert_outcomes(passed=5)
    d = doc(mini)
    # hand-made baseline that was faster: this run is ~25% slower in TTFT
    e = d["entries"]["serving[agg-tp8-in512-out32-c4]"]
    e["samples"]["ttft_ms"]["values"] = [v * 0.8 for v in e["samples"]["ttft_ms"]["values"]]
    save(mini, d)
    result = mini.runpytest("--junitxml", "junit.xml", *SIM)
    result.assert_outcomes(passed=4, failed=1)
    out = result.stdout.str()
    assert "serving[agg-tp8-in512-out32-c4] on agg-tp8 [SIMULATED]: slower than the baseline in baselines/sim-mi300x/mini.json" in out
    for column in ("metric", "statistic", "baseline", "now", "change", "interval (99%)", "tolerance", "verdict"):
        assert column in out
    line = next(l for l in out.splitlines() if l.strip().startswith("ttft_ms") and "REGRESSION" in l)
    assert "+25.0%" in line and "+5%" in line
    assert "Traceback" not in out and "items.py" not in out
    assert "regression: serving[agg-tp8-in512-out32-c4]: ttft_ms p90" in out
    assert 'name="baseline" value="regression"' in (mini.path / "junit.xml").read_text()
    # -x stops at the regression: it belongs to the item
    result = mini.runpytest("-x", "-k", "serving", *SIM)
    result.assert_outcomes(failed=1)
    assert "stopping after 1 failures" in result.stdout.str()
    # a wider tolerance lets it pass; the flag is repeatable
    mini.runpytest("--pdslo-tolerance", "ttft_ms=30", "--pdslo-tolerance", "tpot_ms=5", *SIM).assert_outcomes(passed=5)
    # update mode: reported, rewritten, not failed
    mini.runpytest("--pdslo-update-baselines", *SIM).assert_outcomes(passed=5)
    mini.runpytest(*SIM).assert_outcomes(passed=5)


def test_suite_regression_block(mini: pytest.Pytester) -> None:
    mini.runpytest("--pdslo-update-baselines", *SIM).assert_outcomes(passed=5)
    d = doc(mini)
    for e in d["entries"].values():
        e["samples"]["ttft_ms"]["values"] = [v * 0.8 for v in e["samples"]["ttft_ms"]["values"]]
    save(mini, d)
    mini.runpytest("-k", "serving", *SIM).assert_outcomes(failed=2)
    (mini.path / "suites" / "mini.yaml").write_text(MINI + "regression: {metrics: {ttft_ms: 40, tpot_ms: null}}\n")
    mini.runpytest("-k", "serving", *SIM).assert_outcomes(passed=2)


def test_require_baselines(mini: pytest.Pytester) -> None:
    result = mini.runpytest("-k", "prefill", "--pdslo-require-baselines", *SIM)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "no baseline in baselines/sim-mi300x/mini.json (--pdslo-require-baselines)" in out
    assert "Traceback" not in out
    mini.runpytest("-k", "prefill", "--pdslo-require-baselines", "--pdslo-update-baselines", *SIM).assert_outcomes(passed=1)
    mini.runpytest("-k", "prefill", "--pdslo-require-baselines", *SIM).assert_outcomes(passed=1)


def test_prune_only_on_full_collection(mini: pytest.Pytester) -> None:
    mini.runpytest("--pdslo-update-baselines", *SIM).assert_outcomes(passed=5)
    d = doc(mini)
    d["entries"]["decode[agg-tp8-ctx512-c64]"] = d["entries"]["decode[agg-tp8-ctx512-c4]"]  # a point the suite lost
    save(mini, d)
    # a partial run (-k, -m, a node id) never prunes, neither the stale id nor the deselected ones
    for args in (["-k", "decode"], ["-m", "serving"], ["suites/mini.yaml::prefill[agg-tp8-in512-c4]"]):
        result = mini.runpytest("--pdslo-update-baselines", *args, *SIM)
        assert "suite not fully collected in this session: nothing pruned" in result.stdout.str()
        assert sorted(doc(mini)["entries"]) == sorted(IDS + ["decode[agg-tp8-ctx512-c64]"])
    # the full suite: the stale entry goes, the rest stays
    result = mini.runpytest("--pdslo-update-baselines", *SIM)
    out = result.stdout.str()
    assert "0 new, 5 unchanged), 1 pruned" in out and "pruned: decode[agg-tp8-ctx512-c64]" in out
    assert sorted(doc(mini)["entries"]) == sorted(IDS)


def test_corrupted_baseline_is_one_clear_error_and_left_alone(mini: pytest.Pytester) -> None:
    mini.runpytest("--pdslo-update-baselines", *SIM).assert_outcomes(passed=5)
    path = mini.path / BASELINE
    text = path.read_text().replace('"requests": 40', '"requests": NaN', 1)
    path.write_text(text)
    result = mini.runpytest(*SIM)
    result.assert_outcomes(failed=5)
    out = result.stdout.str()
    assert "baseline file baselines/sim-mi300x/mini.json is unusable:" in out
    assert "entry 'decode[agg-tp8-ctx512-c4]': requests:" in out
    assert "Traceback" not in out and "pydantic" not in out
    assert path.read_text() == text  # never silently overwritten

    path.write_text('{"schema_version": 1, "entries": {')
    result = mini.runpytest("-k", "prefill", *SIM)
    result.assert_outcomes(failed=1)
    assert "not valid JSON: line 1, column" in result.stdout.str()

    result = mini.runpytest("--pdslo-update-baselines", *SIM)
    result.assert_outcomes(passed=5)
    assert "invalid JSON replaced" in result.stdout.str()
    assert sorted(doc(mini)["entries"]) == sorted(IDS)


def test_software_change_compares_hardware_change_does_not(mini: pytest.Pytester) -> None:
    mini.runpytest("--pdslo-update-baselines", *SIM).assert_outcomes(passed=5)
    d = doc(mini)
    for e in d["entries"].values():
        e["fingerprint"]["pdslo_version"] = "0.0.9"
    d["entries"]["serving[agg-tp4-in512-out32-c4]"]["fingerprint"]["gpus"] = 8
    save(mini, d)
    result = mini.runpytest(*SIM)
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    assert "4 unchanged, 1 not compared" in out
    assert "compared across software changes: pytest-pdslo 0.0.9 → 0.1.0" in out
    assert "not compared, hardware differs: GPU count 8 → 4" in out
    result = mini.runpytest("--pdslo-require-baselines", *SIM)
    result.assert_outcomes(passed=4, failed=1)
    assert "measured on other hardware (GPU count 8 → 4)" in result.stdout.str()


def test_strict_fails_an_inconclusive_comparison(mini: pytest.Pytester) -> None:
    mini.makefile(".yaml", **{"suites/few": MINI.replace("name: mini", "name: few").replace("requests: 40", "requests: 6")})
    mini.runpytest("suites/few.yaml", "-k", "serving and tp8", "--pdslo-update-baselines", *SIM).assert_outcomes(passed=1)
    path = mini.path / "baselines/sim-mi300x/few.json"
    d = json.loads(path.read_text())
    e = d["entries"]["serving[agg-tp8-in512-out32-c4]"]
    e["samples"]["ttft_ms"]["values"] = [v * 0.97 for v in e["samples"]["ttft_ms"]["values"]]
    path.write_text(json.dumps(d))
    result = mini.runpytest("suites/few.yaml", "-k", "serving and tp8", *SIM)
    result.assert_outcomes(passed=1)
    assert "1 inconclusive" in result.stdout.str()
    result = mini.runpytest("suites/few.yaml", "-k", "serving and tp8", "--pdslo-strict", *SIM)
    result.assert_outcomes(failed=1)
    assert "baseline comparison inconclusive (--pdslo-strict)" in result.stdout.str()
    assert "6 samples (needs >= 10)" in result.stdout.str()


def test_baseline_dir_and_env_options(mini: pytest.Pytester) -> None:
    mini.runpytest("--pdslo-update-baselines", "--pdslo-baselines", "perf/base", "--pdslo-baseline-env", "lab-a", "-k", "prefill", *SIM)
    assert (mini.path / "perf/base/lab-a/mini.json").exists()
    mini.makeini("[pytest]\npdslo_baselines = perf/base\npdslo_baseline_env = lab-a\n")
    assert "perf/base/lab-a/mini.json: 1 unchanged" in mini.runpytest("-k", "prefill", *SIM).stdout.str()
    result = mini.runpytest("--pdslo-tolerance", "tbt_ms=3", *SIM)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--pdslo-tolerance: unknown metric 'tbt_ms'" in result.stderr.str()


def test_results_json_has_verdicts_not_samples(mini: pytest.Pytester) -> None:
    mini.runpytest("--pdslo-update-baselines", "-k", "prefill", *SIM)
    mini.runpytest("--pdslo-report", "out", "-k", "prefill", *SIM).assert_outcomes(passed=1)
    entry = json.loads((mini.path / "out/results.json").read_text())["tests"][0]
    assert entry["baseline"]["summary"] == "unchanged" and "record" not in entry["baseline"]
    assert {v["metric"] for v in entry["baseline"]["verdicts"]} == {"ttft_ms", "output_throughput", "request_goodput"}


def test_xdist_refresh_is_written_by_the_controller(mini: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    mini.runpytest("--pdslo-update-baselines", "-k", "decode", *SIM).assert_outcomes(passed=2)
    d = doc(mini)
    d["entries"]["serving[gone-c1]"] = d["entries"]["decode[agg-tp8-ctx512-c4]"]
    save(mini, d)
    result = mini.runpytest("-n", "2", "--pdslo-update-baselines", *SIM)
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    assert "5 written (0 changed, 3 new, 2 unchanged), 1 pruned" in out
    assert sorted(doc(mini)["entries"]) == sorted(IDS)
    # partial selection under xdist: compared, and nothing pruned
    d = doc(mini)
    d["entries"]["serving[gone-c1]"] = d["entries"]["decode[agg-tp8-ctx512-c4]"]
    save(mini, d)
    result = mini.runpytest("-n", "2", "--pdslo-update-baselines", "-k", "serving", *SIM)
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "baselines/sim-mi300x/mini.json: 2 unchanged" in out and "nothing pruned" in out
    assert "serving[gone-c1]" in doc(mini)["entries"]
    assert not list((mini.path / BASELINE.parent).glob(".*.tmp"))


def test_update_mode_still_fails_slos_but_records_them(mini: pytest.Pytester) -> None:
    (mini.path / "suites" / "mini.yaml").write_text(MINI.replace("ttft_ms: {p90: 5000}", "ttft_ms: {p90: 0.001}"))
    result = mini.runpytest("--pdslo-update-baselines", "-k", "prefill", *SIM)
    result.assert_outcomes(failed=1)
    assert "SLO not met" in result.stdout.str()
    assert list(doc(mini)["entries"]) == ["prefill[agg-tp8-in512-c4]"]
