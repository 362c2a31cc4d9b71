"""The embedded demo: a real SFT run through real Airflow on the local backend, offline.

    sft-demo [--workspace DIR]

1. builds a tiny Llama model and tokenizer locally (no downloads);
2. runs the example DAG ``sft_pipeline`` with ``airflow dags test`` against a
   SQLite metadata database under the workspace: resolve the bundled chat
   dataset -> train on the CPU -> export ``final_model`` -> write the loss chart;
3. loads the exported model with ``transformers`` and generates a reply;
4. prints where the model, ``metrics.json`` and ``loss_chart.html`` are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.tiny_model import build_tiny_model

DAG_ID = "sft_pipeline"

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


def run_pipeline(
    workspace: Path,
    dags_folder: Path,
    conf: dict,
    *,
    echo: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Path:
    """``airflow db migrate`` then ``airflow dags test``; returns the log file. Raises on failure."""
    env = {**demo_environment(workspace, dags_folder), **(extra_env or {})}
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run([*airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    log_path = workspace / "dags-test.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*airflow, "dags", "test", DAG_ID, "-c", json.dumps(conf)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if echo and "[sft]" in line:
                print("  " + line.split("[sft] ", 1)[1].split(" [airflow.", 1)[0].rstrip()[:160], flush=True)
        code = process.wait()
    if code != 0 or "state=success" not in log_path.read_text():
        raise SystemExit(f"airflow dags test {DAG_ID} failed; see {log_path}")
    return log_path


def generate_reply(model_dir: Path, prompt: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", default="workspace", help="output directory (default: ./workspace)")
    parser.add_argument(
        "--dags-folder", default="dags", help="folder holding sft_pipeline.py (default: ./dags)"
    )
    args = parser.parse_args(argv)
    workspace = Path(args.workspace).resolve()
    dags_folder = Path(args.dags_folder).resolve()
    started = time.monotonic()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    base_model = workspace / "base-model"
    if not (base_model / "config.json").exists():
        print(f"Building the tiny base model in {base_model} ...", flush=True)
        build_tiny_model(base_model)
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
        f"  metrics:    {metrics_path}  (final loss {metrics['final_loss']:.3f}, min {metrics['min_loss']:.3f}, "
        f"{metrics['steps']} steps)"
    )
    print(f"  loss chart: {chart_path}")
    print(f"  sample reply to 'What is the capital of France?': {reply!r}")
    print("  (a 2.5M-parameter model trained for a minute learns the answer format, not the facts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
