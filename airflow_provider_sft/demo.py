"""The embedded demo: a real SFT run through real Airflow on the local backend, offline.

    sft-demo [--workspace DIR]
    sft-demo --serve [--port 8080] [--workspace DIR]

1. builds a tiny Llama model and tokenizer locally (no downloads);
2. runs the example DAG ``sft_pipeline`` with ``airflow dags test`` against a
   SQLite metadata database under the workspace: resolve the bundled chat
   dataset -> train on the CPU -> export ``final_model`` -> write the loss chart;
3. loads the exported model with ``transformers`` and generates a reply;
4. prints where the model, ``metrics.json`` and ``loss_chart.html`` are.

With ``--serve`` it starts ``airflow standalone`` instead (UI and REST API on the port), with
the example DAG's form defaulting to the tiny model and CPU settings: *Trigger* with the
defaults trains it, and the train task's *Training results* tab shows the loss chart.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.training.tiny_model import build_tiny_model
from airflow_provider_sft.params_form import FORM_DEFAULTS_ENV
from airflow_provider_sft.supervisor import supervise

DAG_ID = "sft_pipeline"
#: The example DAGs: the repository's top-level ``dags/``, installed as the package
#: ``airflow_provider_sft.example_dags`` (see pyproject.toml), so the demo works from any directory.
EXAMPLE_DAGS = Path(str(importlib.resources.files("airflow_provider_sft.example_dags")))

#: Sized for a 2-core machine: 180 optimizer steps on the bundled dataset, about 40 s on one thread.
DEMO_TRAINING = {
    "resource_gpu_per_worker": 0,
    "resource_cpu_per_worker": "1",
    "resource_memory_per_worker": "8Gi",
    "effective_batch_size": 8,
    "num_epochs": 6,
    "learning_rate": 2e-3,
    "lr_warmup_steps": 10,
    "max_seq_len": 512,
    "max_tokens_per_gpu": 4096,
    "seed": 42,
}


def demo_environment(workspace: Path, dags_folder: Path) -> dict[str, str]:
    airflow_home = workspace / "airflow"
    return {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "SFT_WORKSPACE": str(workspace),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def free_port() -> int:
    """A TCP port nothing listens on now (on every interface, as Airflow's log servers bind)."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def one_machine_settings() -> dict[str, str]:
    """Settings that let ``--serve`` share a machine: a few executor workers, not Airflow's 32
    (each a Python process of about 150 MB), and log servers on free ports instead of the
    fixed 8793/8794, so a second demo on the host starts instead of "address already in use".
    """
    return {
        "AIRFLOW__CORE__PARALLELISM": str(max(2, min(4, os.cpu_count() or 2))),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }


SENSITIVE_NAMES_SETTING = "AIRFLOW__CORE__SENSITIVE_VAR_CONN_NAMES"
#: Param keys whose values Airflow's secrets masker hides by name: the audit log's trigger
#: entry (``/api/v2/eventLogs``) records the run's ``conf``, redacted by key name only.
SECRET_PARAM_KEYS = ("envs",)


def sensitive_names(configured: str) -> str:
    """``[core] sensitive_var_conn_names`` with ``envs`` added (the user's names kept)."""
    names = [name.strip() for name in configured.split(",") if name.strip()]
    return ",".join([*names, *(key for key in SECRET_PARAM_KEYS if key not in names)])


def serve_environment(workspace: Path, dags_folder: Path, port: int) -> dict[str, str]:
    """``airflow standalone`` on ``port`` (UI, REST, execution API), the form defaulting to the demo."""
    env = demo_environment(workspace, dags_folder)
    defaults = workspace / "form-defaults.json"
    defaults.write_text(json.dumps({"base_model": str(workspace / "base-model"), **DEMO_TRAINING}, indent=2))
    base = f"http://127.0.0.1:{port}"
    for name, value in one_machine_settings().items():
        env.setdefault(name, value)  # what the caller set wins
    env[SENSITIVE_NAMES_SETTING] = sensitive_names(env.get(SENSITIVE_NAMES_SETTING, ""))
    env.update(
        {
            # standalone starts its components as `airflow ...` through PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            FORM_DEFAULTS_ENV: str(defaults),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": base,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        }
    )
    return env


_LOG_TAIL = re.compile(r"\s+\[[\w.]+\]\s+loc=\S+\s*$")


def echo_text(line: str) -> str:
    """The provider's message of one ``airflow dags test`` log line, without the logger and location."""
    return _LOG_TAIL.sub("", line.split("[sft] ", 1)[1]).rstrip()[:160]


def run_pipeline(
    workspace: Path,
    dags_folder: Path,
    conf: dict,
    *,
    echo: bool = True,
    extra_env: dict[str, str] | None = None,
    dag_id: str = DAG_ID,
) -> Path:
    """``airflow db migrate`` then ``airflow dags test`` of ``dag_id``; returns the log file. Raises on failure."""
    env = {**demo_environment(workspace, dags_folder), **(extra_env or {})}
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    log_path = workspace / ("dags-test.log" if dag_id == DAG_ID else f"dags-test-{dag_id}.log")
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*airflow, "dags", "test", dag_id, "-c", json.dumps(conf)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if echo and "[sft]" in line:
                print("  " + echo_text(line), flush=True)
        code = process.wait()
    if code != 0 or "state=success" not in log_path.read_text():
        raise SystemExit(f"airflow dags test {dag_id} failed; see {log_path}")
    return log_path


def serve(workspace: Path, dags_folder: Path, port: int) -> int:
    """Run ``airflow standalone`` in the foreground until Ctrl-C, which ends every process of it."""
    env = serve_environment(workspace, dags_folder, port)
    home = Path(env["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    print(
        f"Starting Airflow (standalone) at http://127.0.0.1:{port} with DAG {DAG_ID}; log in as admin "
        f"(the password is in {home / 'simple_auth_manager_passwords.json.generated'} once it is up).\n"
        "Open the DAG, press Trigger: the form's defaults train the tiny model on the CPU. "
        "Ctrl-C stops it.",
        flush=True,
    )
    return supervise([sys.executable, "-m", "airflow", "standalone"], env)


def generate_reply(model_dir: Path, prompt: str) -> str:
    """The exported model's greedy reply to ``prompt`` (what the evaluate DAG asks, too)."""
    from airflow_provider_sft.core.results.evaluate import LoadedModel

    return LoadedModel(str(model_dir)).reply(prompt, max_new_tokens=24)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", default="workspace", help="output directory (default: ./workspace)")
    parser.add_argument(
        "--dags-folder",
        default=str(EXAMPLE_DAGS),
        help="folder holding sft_pipeline.py (default: the provider's example DAG)",
    )
    parser.add_argument("--serve", action="store_true", help="start airflow standalone with the example DAG")
    parser.add_argument("--port", type=int, default=8080, help="--serve: the UI's port (default: 8080)")
    args = parser.parse_args(argv)
    workspace = Path(args.workspace).resolve()
    dags_folder = Path(args.dags_folder).resolve()
    started = time.monotonic()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    base_model = workspace / "base-model"
    if not (base_model / "config.json").exists():
        print(f"Building the tiny base model in {base_model} ...", flush=True)
        build_tiny_model(base_model)
    if args.serve:
        return serve(workspace, dags_folder, args.port)
    print(f"Running DAG {DAG_ID} with airflow dags test (local backend, CPU) ...", flush=True)
    conf = {"base_model": str(base_model), "workspace": str(workspace), **DEMO_TRAINING}
    run_pipeline(workspace, dags_folder, conf)

    latest = json.loads((workspace / c.LATEST_FILE).read_text())  # this run's outputs
    model_dir, metrics_path = Path(latest["model_path"]), Path(latest["metrics_path"])
    chart_path = workspace / c.RUNS_DIR / Path(latest["run_dir"]).name / c.LOSS_CHART_FILE
    metrics = json.loads(metrics_path.read_text())
    reply = generate_reply(model_dir, "What is the capital of France?")
    print()
    print(f"Done in {time.monotonic() - started:.0f}s.")
    print(f"  model:      {model_dir}")
    print(
        f"  metrics:    {metrics_path}  (final loss {metrics['final_loss_smoothed']:.3f} smoothed, "
        f"{metrics['final_loss']:.3f} last step, min {metrics['min_loss']:.3f}, {metrics['steps']} steps)"
    )
    print(f"  loss chart: {chart_path}")
    print(f"  sample reply to 'What is the capital of France?': {reply!r}")
    print("  (a 2.5M-parameter model trained for a minute learns the answer format, not the facts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
