# Common pytest-pdslo workflows. Run with `just <recipe>` (`pip install rust-just` gives `just`).
# TARGET: sim (default, simulator), sim-http, or http://HOST:PORT of a vLLM / llm-d endpoint.

target := env_var_or_default("PDSLO_TARGET", "sim")
report := env_var_or_default("PDSLO_REPORT", "pdslo-report")

# list the recipes
default:
    @just --list

# install the plugin with its test tools into the current environment
install:
    pip install -e ".[dev]"

# decode phase only (pure decode, DecodeBenchConnector on real vLLM)
decode *ARGS:
    pytest suites/ -m decode --pdslo-target {{target}} --pdslo-report {{report}} {{ARGS}}

# prefill phase only (TTFT and input tokens/s)
prefill *ARGS:
    pytest suites/ -m prefill --pdslo-target {{target}} --pdslo-report {{report}} {{ARGS}}

# the serving sweep over every deployment and load: Pareto frontier and decision table
sweep *ARGS:
    pytest suites/ -m serving --pdslo-target {{target}} --pdslo-report {{report}} {{ARGS}}

# everything: phases, sweep, P:D plan (pass e.g. --pdslo-gpu-budget 64)
all *ARGS:
    pytest suites/ --pdslo-target {{target}} --pdslo-report {{report}} {{ARGS}}

# accuracy checks only
eval *ARGS:
    pytest suites/ -m accuracy --pdslo-target {{target}} --pdslo-report {{report}} {{ARGS}}

# rewrite the stored baselines for the tests that run (review the git diff, then commit)
refresh-baselines *ARGS:
    pytest suites/ --pdslo-target {{target}} --pdslo-update-baselines {{ARGS}}
    git status --short baselines/

# the project's own tests (what CI runs)
test *ARGS:
    pytest {{ARGS}}
