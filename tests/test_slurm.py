"""The tiny DAG through ``--profile profiles/slurm`` on a real single-node SLURM.

Needs the SLURM of ``tests/cluster/start_slurm.sh`` (``.ci/run`` starts it and sets
``RMI_TEST_SLURM=1``); without that variable the test is skipped. The profile is used as is; only
the partition, memory, runtime and threads are overridden for this 2-CPU node on the command line,
and the plugin's status polling is made frequent (the node is idle; a real cluster wants it gentle).
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml
from conftest import GPU_RULES, REPO, TINY_RESULTS, planned_jobs, snakemake

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("RMI_TEST_SLURM") != "1", reason="set RMI_TEST_SLURM=1 with SLURM running"),
]
PROFILE = REPO / "profiles" / "slurm"
LOCAL_RULES = {"all", "download", "fetch_weights", "tables"}


def local_overrides() -> list[str]:
    """CLI overrides that fit the profile to the test node: partition ``debug``, small memory and
    runtime, one thread per job (two jobs side by side); everything else (``slurm_extra``...) as the profile says."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    resources = []
    for rule, values in profile["set-resources"].items():
        for key, value in values.items():
            value = {"slurm_partition": "debug", "mem_mb": 1500, "runtime": 30}.get(key, value)
            if isinstance(value, str) and not value.startswith("'"):  # slurm_extra is quoted already
                value = repr(value)
            resources.append(f"{rule}:{key}={value}")
    threads = [f"{rule}=1" for rule in profile["set-threads"]]  # two jobs at a time on the 2-CPU node
    return [
        "--profile",
        str(PROFILE),
        "--default-resources",
        "slurm_partition=debug",
        "mem_mb=1500",
        "runtime=30",
        "--set-resources",
        *resources,
        "--set-threads",
        *threads,
        "--slurm-status-command",
        "squeue",  # no accounting database on the test cluster
        "--slurm-keep-successful-logs",  # the plugin deletes the logs of successful jobs by default
        # the plugin polls 40 s after a job ends by default: about 6 min of waiting for this small DAG
        "--slurm-init-seconds-before-status-checks",
        "2",
        "--latency-wait",
        "10",
        "--retries",
        "0",
    ]


def job_tres(job_id: str) -> str:
    """The trackable resources SLURM recorded for a (finished, still listed) job."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return " ".join(re.findall(r"(?:TresPerNode|TresPerJob|ReqTRES|AllocTRES)=\S+", out))


def test_tiny_dag_runs_as_slurm_jobs(completed_tiny_run, tmp_path):
    workdir = tmp_path / "slurm"
    workdir.mkdir()
    plan = planned_jobs(snakemake(workdir, "-n").stdout)
    proc = snakemake(workdir, *local_overrides())
    assert "slurm" in (proc.stdout + proc.stderr).lower()

    logs = workdir / ".snakemake" / "slurm_logs"
    submitted = {}
    for log in logs.rglob("*.log"):
        rule = next(p for p in log.relative_to(logs).parts if p.startswith("rule_"))[len("rule_") :]
        submitted.setdefault(rule, []).append(log.stem)
    expected = {rule: n for rule, n in plan.items() if rule not in LOCAL_RULES}
    assert {rule: len(ids) for rule, ids in submitted.items()} == expected
    assert not set(submitted) & LOCAL_RULES

    for rule, ids in submitted.items():
        for job_id in ids:
            assert job_id.isdigit(), f"{rule}: unexpected log name {job_id}"
            tres = job_tres(job_id)
            assert ("gpu" in tres) == (rule in GPU_RULES), f"{rule} job {job_id}: {tres}"

    local = completed_tiny_run / TINY_RESULTS / "table1.csv"
    assert (workdir / TINY_RESULTS / "table1.csv").read_text() == local.read_text()
