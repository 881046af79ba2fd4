"""Profiles: under the SLURM profile the paper grid asks for GPUs on exactly the GPU rules."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import GPU_RULES, REPO, planned_jobs, snakemake


def job_resources(dry_run: str) -> list[tuple[str, dict[str, str]]]:
    """``(rule, {resource: value})`` for every job block of a ``snakemake -n`` listing."""
    jobs, rule = [], None
    for line in dry_run.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = m.group(1)
        elif line.strip().startswith("resources:") and rule:
            pairs = re.findall(r"(\w+)=((?:'[^']*'|\"[^\"]*\"|[^,])+)", line.split(":", 1)[1])
            jobs.append((rule, {k: v.strip() for k, v in pairs}))
            rule = None
    return jobs


def slurm_dry_run_of_the_paper_grid(workdir, *overlays) -> str:
    """Snakemake's dry-run output for config/paper.yaml's Table 1 (plus ``overlays``) with profiles/slurm."""
    paper = REPO / "config" / "paper.yaml"
    table = f"{yaml.safe_load(paper.read_text())['results_dir']}/table1.csv"
    profile = str(REPO / "profiles" / "slurm")
    return snakemake(workdir, "-n", "--profile", profile, table, configfile=[paper, *overlays]).stdout


@pytest.fixture(scope="module")
def paper_dry_run(tmp_path_factory):
    return slurm_dry_run_of_the_paper_grid(tmp_path_factory.mktemp("paper"))


def test_gpu_requested_on_exactly_the_gpu_rules(paper_dry_run):
    jobs = job_resources(paper_dry_run)
    counts = planned_jobs(paper_dry_run)
    assert len(jobs) == sum(counts.values()) and counts["train"] == 16
    for rule, res in jobs:
        assert (res.get("gpu") == "1") == (rule in GPU_RULES), (rule, res)
    by_rule = {rule: res for rule, res in jobs}
    assert by_rule["train"]["slurm_partition"] == "<gpu-partition>"
    assert "--signal=TERM@120" in by_rule["train"]["slurm_extra"]
    assert by_rule["densecrf"]["slurm_partition"] == "<partition>" and "gpu" not in by_rule["densecrf"]
    assert int(by_rule["train"]["runtime"]) >= 24 * 60


def test_profiles_are_valid_snakemake_profiles():
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    local = yaml.safe_load((REPO / "profiles" / "local" / "config.yaml").read_text())
    assert slurm["executor"] == "slurm" and slurm["retries"] >= 1
    assert set(slurm["set-resources"]) >= GPU_RULES - {"extract_features"}
    assert any(str(r).startswith("gpu=") for r in local["resources"])


def test_lockstep_job_gets_a_gpu_and_the_preemption_signal(tmp_path):
    """With the config/lockstep.yaml overlay the paper grid's two train_lockstep jobs get what train gets."""
    out = slurm_dry_run_of_the_paper_grid(tmp_path, REPO / "config" / "lockstep.yaml")
    jobs = [res for rule, res in job_resources(out) if rule == "train_lockstep"]
    assert len(jobs) == 2
    for res in jobs:
        assert res["gpu"] == "1" and res["slurm_partition"] == "<gpu-partition>" and int(res["runtime"]) >= 24 * 60
        assert "--signal=TERM@120 --requeue" in res["slurm_extra"]
