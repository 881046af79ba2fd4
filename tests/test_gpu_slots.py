"""GPU slots of local runs (rmi.gpu_slots), without a GPU: a fake ``nvidia-smi`` lists the GPUs and
every job is a process that takes a slot, reports its ``CUDA_VISIBLE_DEVICES`` and holds the slot
until the test lets it go (or kills it)."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import GPU_RULES, REPO, SNAKEMAKE, TINY_CONFIG

from rmi.device import select_device

#: a job: take a slot, write [acquire's return, CUDA_VISIBLE_DEVICES or None] (JSON) to argv[3],
#: hold the slot until argv[3] with suffix .release exists
JOB = """
import json, logging, os, sys, time
from pathlib import Path
from rmi.gpu_slots import acquire
logging.basicConfig(level=logging.INFO)
out = Path(sys.argv[3])
gpu = acquire(sys.argv[1], int(sys.argv[2]))
out.with_suffix(".tmp").write_text(json.dumps([gpu, os.environ.get("CUDA_VISIBLE_DEVICES")]))
out.with_suffix(".tmp").rename(out)
while not out.with_suffix(".release").exists():
    time.sleep(0.05)
"""


def fake_nvidia_smi(bin_dir: Path, n_gpus: int, status: int = 0) -> Path:
    """An ``nvidia-smi`` in ``bin_dir`` whose ``-L`` lists ``n_gpus`` GPUs and exits ``status``; a call
    leaves ``bin_dir/called``. Shell builtins only: it runs with ``PATH=bin_dir``."""
    bin_dir.mkdir(exist_ok=True)
    gpus = "".join(f'echo "GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08x}-fake)"\n' for i in range(n_gpus))
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f'#!/bin/sh\n: > "{bin_dir}/called"\n{gpus}exit {status}\n')
    exe.chmod(0o755)
    return bin_dir


def job_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """A job's environment: PATH is ``bin_dir`` alone (the machine's own ``nvidia-smi`` out of
    sight), no CUDA_VISIBLE_DEVICES, SLURM_JOB_ID or RMI_* unless in ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env = {k: v for k, v in env.items() if not k.startswith("RMI_")}
    return {**env, "PATH": str(bin_dir), "PYTHONPATH": str(REPO), **extra}


class Jobs:
    """Jobs taking slots of ``slot_dir`` with ``jobs_per_gpu``; each reports to ``out/<name>``."""

    def __init__(self, tmp_path: Path, jobs_per_gpu: int, env: dict[str, str]):
        self.slot_dir, self.out, self.jobs_per_gpu, self.env = tmp_path / "slots", tmp_path / "out", jobs_per_gpu, env
        self.out.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        cmd = [sys.executable, "-c", JOB, str(self.slot_dir), str(self.jobs_per_gpu), str(self.out / name)]
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stderr=subprocess.PIPE, text=True)

    def report(self, name: str, timeout: float = 30.0) -> tuple[str | None, str | None]:
        """``(acquire's return, CUDA_VISIBLE_DEVICES)`` of job ``name`` once it is past ``acquire``."""
        deadline = time.monotonic() + timeout
        while not (self.out / name).exists():
            assert self.procs[name].poll() is None, f"job {name} died: {self.procs[name].stderr.read()}"
            assert time.monotonic() < deadline, f"job {name} got no slot in {timeout} s"
            time.sleep(0.05)
        return tuple(json.loads((self.out / name).read_text()))

    def release(self, name: str) -> str:
        """Let job ``name`` end; its stderr."""
        (self.out / name).with_suffix(".release").touch()
        _, err = self.procs[name].communicate(timeout=30)
        assert self.procs[name].returncode == 0, err
        return err

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.communicate()


@pytest.fixture
def jobs(tmp_path):
    """``make(jobs_per_gpu, env)`` -> a ``Jobs``; every job left is killed at the end."""
    made = []

    def make(jobs_per_gpu: int, env: dict[str, str]) -> Jobs:
        made.append(Jobs(tmp_path, jobs_per_gpu, env))
        return made[-1]

    yield make
    for j in made:
        j.close()


def test_eight_jobs_spread_two_per_gpu_over_four_gpus_and_a_ninth_waits(tmp_path, jobs):
    j = jobs(2, job_env(fake_nvidia_smi(tmp_path / "bin", 4)))
    names = [f"job{i}" for i in range(8)]
    for name in names:
        j.start(name)
    got = {name: j.report(name) for name in names}
    assert all(gpu == visible for gpu, visible in got.values()), got
    assert collections.Counter(gpu for gpu, _ in got.values()) == {"0": 2, "1": 2, "2": 2, "3": 2}

    j.start("ninth")  # every slot is taken: it waits, and takes the slot of the job that ends
    time.sleep(1.5)
    assert not (j.out / "ninth").exists() and j.procs["ninth"].poll() is None
    assert "waiting" not in j.release("job5")
    assert j.report("ninth") == got["job5"]
    assert j.release("ninth").count("are taken: waiting") == 1


def test_first_jobs_take_one_slot_per_gpu(tmp_path, jobs):
    """4 jobs on 4 GPUs with 2 slots each use all 4 GPUs, one after another as well."""
    j = jobs(2, job_env(fake_nvidia_smi(tmp_path / "bin", 4)))
    for i in range(4):
        j.start(f"job{i}")
        j.report(f"job{i}")
    assert sorted(j.report(f"job{i}")[0] for i in range(4)) == ["0", "1", "2", "3"]


def test_killed_job_frees_its_slot(tmp_path, jobs):
    j = jobs(1, job_env(fake_nvidia_smi(tmp_path / "bin", 1)))
    j.start("holder")
    assert j.report("holder") == ("0", "0")
    j.start("next")
    time.sleep(1.0)
    assert not (j.out / "next").exists(), "a second job on a one-slot pool did not wait"
    os.kill(j.procs["holder"].pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert j.report("next", timeout=10) == ("0", "0")
    assert time.monotonic() - t0 < 5


def test_cuda_visible_devices_is_honoured(tmp_path, jobs):
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 4)
    j = jobs(2, job_env(bin_dir, CUDA_VISIBLE_DEVICES="2,3"))
    for i in range(4):
        j.start(f"job{i}")
    got = [j.report(f"job{i}") for i in range(4)]
    assert collections.Counter(gpu for gpu, _ in got) == {"2": 2, "3": 2}
    assert all(gpu == visible for gpu, visible in got)
    assert not (bin_dir / "called").exists(), "nvidia-smi consulted although CUDA_VISIBLE_DEVICES is set"


@pytest.mark.parametrize(
    "n_gpus, status, env",
    [
        (4, 0, {"SLURM_JOB_ID": "42"}),
        (4, 0, {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "5"}),
        (None, 0, {}),  # no nvidia-smi
        (0, 9, {}),  # nvidia-smi fails (no driver)
        (4, 0, {"CUDA_VISIBLE_DEVICES": ""}),
        (4, 0, {"CUDA_VISIBLE_DEVICES": "-1"}),
    ],
)
def test_nothing_changes_under_slurm_or_without_gpu(tmp_path, jobs, n_gpus, status, env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if n_gpus is not None:
        fake_nvidia_smi(bin_dir, n_gpus, status)
    j = jobs(1, job_env(bin_dir, **env))
    j.start("job")
    assert j.report("job") == (None, env.get("CUDA_VISIBLE_DEVICES"))
    assert not j.slot_dir.exists(), "a slot was taken"
    if "SLURM_JOB_ID" in env:
        assert not (bin_dir / "called").exists(), "nvidia-smi consulted under SLURM"


def run_cli_job(tmp_path: Path, gpu: bool, **env: str) -> subprocess.CompletedProcess:
    """``run_cli(main, gpu=gpu)`` whose ``main`` prints CUDA_VISIBLE_DEVICES, on 4 fake GPUs."""
    code = (
        "import os; from rmi.cli.common import run_cli; "
        f"run_cli(lambda _: print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')), gpu={gpu})"
    )
    bin_dir = fake_nvidia_smi(tmp_path / "bin", 4)
    return subprocess.run(
        [sys.executable, "-c", code], env=job_env(bin_dir, **env), capture_output=True, text=True, timeout=60
    )


def test_run_cli_takes_a_slot_for_gpu_scripts_only(tmp_path):
    slots = {"RMI_GPU_SLOTS": str(tmp_path / "slots"), "RMI_JOBS_PER_GPU": "2"}
    assert run_cli_job(tmp_path, True, **slots).stdout == "0\n"
    assert run_cli_job(tmp_path, False, **slots).stdout == "unset\n"
    assert run_cli_job(tmp_path, True).stdout == "unset\n"  # outside the workflow: no slot


@pytest.mark.parametrize(
    "slots, jobs_per_gpu, error",
    [
        ("slots", "0", "error: RMI_JOBS_PER_GPU: must be an integer >= 1, not '0'"),
        ("slots", "", "error: RMI_JOBS_PER_GPU: must be an integer >= 1, not ''"),
        ("file/slots", "1", "file/slots: cannot take a GPU slot here: Not a directory"),
    ],
)
def test_bad_slot_settings_are_one_line_errors(tmp_path, slots, jobs_per_gpu, error):
    (tmp_path / "file").write_text("")
    proc = run_cli_job(tmp_path, True, RMI_GPU_SLOTS=str(tmp_path / slots), RMI_JOBS_PER_GPU=jobs_per_gpu)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and error in proc.stderr, proc.stderr


def test_gpu_rules_scripts_take_a_slot():
    """The scripts of the GPU rules, and only those, call ``run_cli(main, gpu=True)``."""
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for script in sorted((REPO / "workflow_scripts").glob("*.py")):
        takes_slot = "run_cli(main, gpu=True)" in script.read_text()
        assert takes_slot == (script.stem in GPU_RULES), script.name
    assert all(f"python -m workflow_scripts.{rule} " in rules for rule in GPU_RULES)


def test_gpu_scripts_make_no_cuda_call_at_import():
    """A CUDA call before run_cli takes the slot would fix the visible devices (cuInit reads
    CUDA_VISIBLE_DEVICES once): importing the GPU rules' scripts must make none."""
    code = "\n".join(
        [
            "import torch, torch.cuda",
            "def forbidden(*args, **kwargs):",
            "    raise AssertionError('CUDA call at import')",
            "torch._C._cuda_getDeviceCount = torch.cuda._lazy_init = forbidden",
            *(f"import workflow_scripts.{rule}" for rule in sorted(GPU_RULES)),
            "assert not torch.cuda.is_initialized()",
        ]
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_select_device_logs_the_device(monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with caplog.at_level(logging.INFO, logger="rmi.device"):
        select_device("cpu")
        select_device("cuda")  # torch.device("cuda") does not touch CUDA
    assert caplog.messages == ["device: cpu", "device: cuda (CUDA_VISIBLE_DEVICES=2)"]


@pytest.mark.slow
def test_workflow_exports_the_slot_settings(tmp_path):
    """rules/common.smk gives every job the slot directory under results_dir and the config's
    jobs_per_gpu (schema default 1), so a GPU script run by a rule takes a slot there."""
    (tmp_path / "job.py").write_text(
        "import os\nfrom rmi.cli.common import run_cli\n"
        "run_cli(lambda _: print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['RMI_JOBS_PER_GPU']), gpu=True)\n"
    )
    (tmp_path / "Snakefile").write_text(
        f'configfile: "{TINY_CONFIG}"\n\n\ninclude: "{REPO}/rules/common.smk"\n\n\n'
        f'rule slot:\n    output:\n        "slot.txt",\n    shell:\n        "python {tmp_path}/job.py > {{output}}"\n'
    )
    env = job_env(fake_nvidia_smi(tmp_path / "bin", 4))
    env["PATH"] = os.pathsep.join([env["PATH"], str(SNAKEMAKE.parent), os.defpath])
    for jobs_per_gpu in ("1", "3"):
        cmd = [str(SNAKEMAKE), "-s", str(tmp_path / "Snakefile"), "-d", str(tmp_path / jobs_per_gpu), "-c1", "slot.txt"]
        if jobs_per_gpu != "1":
            cmd += ["--config", f"jobs_per_gpu={jobs_per_gpu}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert (tmp_path / jobs_per_gpu / "slot.txt").read_text() == f"0 {jobs_per_gpu}\n"
        assert (tmp_path / jobs_per_gpu / "results" / ".gpu_slots" / "gpu0.0.lock").exists()
