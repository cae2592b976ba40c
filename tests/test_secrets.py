"""Secrets never reach an artifact: API keys and URL passwords, wherever they come from.

A planted key goes to a server that requires it and to one that echoes the
Authorization header back in its error body; the session writes every artifact
it can (report directory, JUnit XML with captured logs, baselines,
pytest-benchmark JSON, a DEBUG log file) and each one is searched for the key
and for the password of the target URL.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import pytest_pdslo.control  # noqa: F401  imported (with requests) once here, not again in every in-process run
from pytest_pdslo.state import PdsloOptions
from pytest_pdslo.targets import RunOptions
from tests.streaming_server import StreamingServer

pytest_plugins = ["pytester"]

SUITE = """
name: secret
model: tiny
hardware: mi300x
{key_line}
deployments:
  good: {{tp: 1}}
  echo: {{tp: 1, endpoint: "{echo_url}"}}
slo:
  ttft_ms: {{p90: 60000}}
benchmarks:
  serving: {{input_len: 8, output_len: 4, concurrency: 2, requests: 4}}
"""
PLUGINS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]


def _artifacts(root: Path) -> dict[str, bytes]:
    """Every file the session wrote (the suite file is the user's own)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.parent.name != "suites"}


@pytest.mark.parametrize("source", ["cli", "suite_env", "openai_env"])
def test_planted_key_and_password_appear_in_no_artifact(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    key = "sk-pdslo-PLANTED-" + secrets.token_hex(12)
    password = "pw-PLANTED-" + secrets.token_hex(8)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args: list[str] = []
    key_line = ""
    if source == "cli":
        args = ["--pdslo-api-key", key]
    elif source == "suite_env":
        key_line = "api_key_env: PDSLO_TEST_SECRET_KEY"
        monkeypatch.setenv("PDSLO_TEST_SECRET_KEY", key)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", key)
    with StreamingServer(api_key=key) as good, StreamingServer(api_key=key, fault="http_401_echo") as echo:
        echo_url = echo.url.replace("http://", f"http://bob:{password}@")
        suite = pytester.path / "suites" / "secret.yaml"
        suite.parent.mkdir()
        suite.write_text(SUITE.format(key_line=key_line, echo_url=echo_url))
        target = good.url.replace("http://", f"http://alice:{password}@")
        result = pytester.runpytest(
            "--pdslo-target", target, *args, "-v", "-rA", "--showlocals",
            "--pdslo-report", "out", "--junitxml", "junit.xml", "-o", "junit_logging=all",
            "--pdslo-update-baselines", "--pdslo-benchmark-json", "bench.json",
            "--log-level", "DEBUG", "--log-file", "debug.log", "--log-file-level", "DEBUG", *PLUGINS,
        )
        assert good.last_headers.get("Authorization") == f"Bearer {key}"  # the key was sent, as a bearer token
        assert echo.requests >= 1
    result.assert_outcomes(passed=1, failed=1)  # the good server took the key; the echo server refused it
    out = result.stdout.str() + result.stderr.str()
    assert "4 x HTTP 401: bad key: Bearer ***" in out
    artifacts = _artifacts(pytester.path)
    for name in ("out/results.json", "out/summary.md", "out/report.html", "junit.xml", "bench.json", "debug.log",
                 "baselines/mi300x/secret.json"):
        assert name in artifacts, sorted(artifacts)
    assert b"Bearer ***" in artifacts["out/results.json"]
    assert b"127.0.0.1" in artifacts["junit.xml"]
    for secret in (key, password):
        assert secret not in out
        leaked = [name for name, data in artifacts.items() if secret.encode() in data]
        assert leaked == [], f"{secret} found in {leaked}"


def test_suite_key_variable_must_be_set(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PDSLO_UNSET_KEY", raising=False)
    suite = pytester.path / "suites" / "secret.yaml"
    suite.parent.mkdir()
    suite.write_text(SUITE.format(key_line="api_key_env: PDSLO_UNSET_KEY", echo_url="http://127.0.0.1:9"))
    result = pytester.runpytest("--pdslo-target", "http://127.0.0.1:9", *PLUGINS)
    result.assert_outcomes(failed=2)
    assert ("suite 'secret' takes its API key from $PDSLO_UNSET_KEY (api_key_env), which is not set; "
            "export PDSLO_UNSET_KEY=... or pass --pdslo-api-key") in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_key_pasted_into_the_suite_is_refused_without_echo(pytester: pytest.Pytester) -> None:
    suite = pytester.path / "suites" / "secret.yaml"
    suite.parent.mkdir()
    suite.write_text(SUITE.format(key_line="api_key_env: sk-live-PASTED-123", echo_url="http://127.0.0.1:9"))
    result = pytester.runpytest("--collect-only", *PLUGINS)
    out = result.stdout.str()
    assert "api_key_env: must be the name of an environment variable (letters, digits, _), not the key itself" in out
    assert "sk-live-PASTED-123" not in out.replace("secret.yaml", "")


def test_options_never_show_the_key() -> None:
    key = "sk-pdslo-" + secrets.token_hex(8)
    assert key not in repr(RunOptions(api_key=key)) and key not in repr(PdsloOptions(api_key=key))
