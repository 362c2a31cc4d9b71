"""Names and literals used across the core, each defined once."""

from __future__ import annotations

from typing import Final

# --- Seed component defaults (shared/seed/sft-component.md) -----------------
DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"  # training_base_model
DEFAULT_EFFECTIVE_BATCH_SIZE = 128  # samples per optimizer step
DEFAULT_MAX_TOKENS_PER_GPU = 10_000  # instructlab max_batch_len
DEFAULT_MAX_SEQ_LEN = 8192  # longer samples are dropped by data processing
DEFAULT_LEARNING_RATE = 5e-6  # "default: 5e-6" in the seed
DEFAULT_NUM_EPOCHS = 1
DEFAULT_CPU_PER_WORKER = "4"
DEFAULT_GPU_PER_WORKER = 1
DEFAULT_MEMORY_PER_WORKER = "64Gi"
DEFAULT_NUM_PROCS_PER_WORKER: Final = "auto"  # Final: its type is Literal["auto"]
DEFAULT_NUM_WORKERS = 1

# --- instructlab-training defaults for the seed's optional parameters -------
# The seed leaves these `None` ("backend default"); we resolve them to the
# values instructlab-training 0.16 uses so every run records what it used.
DEFAULT_LR_WARMUP_STEPS = 0
DEFAULT_CHECKPOINT_AT_EPOCH = True
DEFAULT_ACCELERATE_FULL_STATE_AT_EPOCH = True
DEFAULT_SEED = 42
DEFAULT_USE_LIGER = False
DEFAULT_LR_SCHEDULER = "cosine"
DEFAULT_SAVE_SAMPLES = 0  # 0 = no mid-epoch checkpoints
DEFAULT_FSDP_SHARDING_STRATEGY = "HYBRID_SHARD"
DEFAULT_VALIDATION_SPLIT = 0.0  # no held-out validation set (instructlab-training's default)

# instructlab-training's optimizer settings (main_ds.py), mirrored by the CPU loop.
ADAMW_BETAS = (0.9, 0.95)
ADAMW_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.0
GRAD_CLIP_NORM = 1.0

# --- Files written by training (same names as instructlab-training) ---------
METRICS_FILE = "training_params_and_metrics_global0.jsonl"  # rank-0 metrics JSONL
HF_FORMAT_DIR = "hf_format"  # checkpoints: hf_format/samples_<N>/ or hf_format/last_epoch/
SAMPLES_CHECKPOINT_PREFIX = "samples_"
LAST_EPOCH_CHECKPOINT = "last_epoch"
FULL_STATE_DIR = "full_state"  # full_state/epoch_<N>/ (optimizer + scheduler state)
PROCESSED_DATA_FILE = "data.jsonl"  # instructlab data_process output
#: A run may lose at most this share of its samples to instructlab's length filters (the data gate).
DEFAULT_MAX_DROPPED_FRACTION = 0.02
#: What a new attempt of a run starts from: "auto" (its newest complete saved state) or "never".
DEFAULT_RESUME = "auto"
#: The exit status of a training process that saved its full state on SIGTERM and stopped (EX_TEMPFAIL).
PREEMPTED_EXIT_CODE = 75
#: Seconds a training pod has, after SIGTERM, to save its full state (``checkpoint_grace_seconds``)
#: when the base model's size is unknown here: a model of up to 7B parameters (core/checkpoint_grace.py).
DEFAULT_CHECKPOINT_GRACE_SECONDS = 900
RUN_CONFIG_FILE = "run_config.json"  # what the entrypoint was asked to do
TRAIN_LOG_FILE = "train.log"  # stdout/stderr of the training process

# --- Files written by export / report ----------------------------------------
FINAL_MODEL_DIR = "final_model"
MODEL_MANIFEST_FILE = "sft_manifest.json"  # sha256 of every file of the exported model
METRICS_SUMMARY_FILE = "metrics.json"
DATA_REPORT_FILE = "data_report.json"  # the data the run trained on: counts, histogram, steps
LOSS_CHART_FILE = "loss_chart.html"
LATEST_FILE = "latest.json"  # <workspace>/latest.json: names the newest exported model (never the model)

# --- Workspace layout ----------------------------------------------------------
RUNS_DIR = "runs"  # <workspace>/runs/<run-name>/: one directory per training run
DATASET_DIR = "dataset"
PROCESSED_DIR = "data"  # <run>/data: the tokenized data.jsonl and its prepared.json (fingerprint, report)

# Perplexity is exp(loss) capped as the original component did: exp(min(loss, 10)).
PERPLEXITY_LOSS_CAP = 10.0

# Kubernetes quantities for the local backend's resource checks.
GPU_RESOURCE_NAME = "nvidia.com/gpu"

# --- Kubeflow Trainer API ----------------------------------------------------------
TRAINER_GROUP = "trainer.kubeflow.org"  # API group of TrainJob / ClusterTrainingRuntime
TRAINER_VERSION = "v1alpha1"  # served version
TRAINER_API_VERSION = f"{TRAINER_GROUP}/{TRAINER_VERSION}"
TRAINJOB_KIND = "TrainJob"
TRAINJOB_PLURAL = "trainjobs"
TRAINJOB_CRD_NAME = f"{TRAINJOB_PLURAL}.{TRAINER_GROUP}"  # for schema detection
CLUSTER_TRAINING_RUNTIME_KIND = "ClusterTrainingRuntime"
CLUSTER_TRAINING_RUNTIME_PLURAL = "clustertrainingruntimes"
TRAINING_RUNTIME_KIND = "TrainingRuntime"  # namespaced
TRAINING_RUNTIME_PLURAL = "trainingruntimes"
# A runtime every upstream install has (manifests/base/runtimes); OpenShift AI adds "training-hub".
DEFAULT_RUNTIME = "torch-distributed"
NODE = "node"  # replicated job and container name of the trainer in a runtime
# Our entry in spec.runtimePatches (v2.2+). The Trainer webhook requires a domain-prefixed
# path (validation.IsDomainPrefixedPath), like Kueue's "kueue.x-k8s.io/manager".
RUNTIME_PATCH_MANAGER = "airflow-provider-sft/sft-train-operator"

# TrainJob status condition types (set by the Trainer controller).
CONDITION_COMPLETE = "Complete"
CONDITION_FAILED = "Failed"
CONDITION_SUSPENDED = "Suspended"
# PyTorchJob condition types (set by the Training Operator) besides Failed and Suspended.
CONDITION_SUCCEEDED = "Succeeded"
CONDITION_RUNNING = "Running"
CONDITION_RESTARTING = "Restarting"

# --- Kubeflow Training Operator v1 API (PyTorchJob) -----------------------------------
TRAINING_OPERATOR_GROUP = "kubeflow.org"
TRAINING_OPERATOR_VERSION = "v1"
PYTORCHJOB_KIND = "PyTorchJob"
PYTORCHJOB_PLURAL = "pytorchjobs"
PYTORCHJOB_CRD_NAME = f"{PYTORCHJOB_PLURAL}.{TRAINING_OPERATOR_GROUP}"
PYTORCH_CONTAINER = "pytorch"  # the operator reads MASTER_PORT from this container's port
PYTORCH_PORT_NAME = "pytorchjob-port"
PYTORCH_PORT = 23456  # the operator's default
LABEL_TRAINING_JOB_NAME = "training.kubeflow.org/job-name"  # on the pods of a PyTorchJob

# Labels on every TrainJob (and its pods) so jobs are findable.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY_VALUE = "airflow-provider-sft"
LABEL_DAG_ID = "airflow-provider-sft/dag-id"
LABEL_TASK_ID = "airflow-provider-sft/task-id"
LABEL_RUN_ID = "airflow-provider-sft/run-id"
LABEL_MAP_INDEX = "airflow-provider-sft/map-index"
LABEL_JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"  # on the pods of a TrainJob's JobSet

# The environment variables secrets reach a pod as (each stored in the job's Secret under its name).
HF_TOKEN_ENV = "HF_TOKEN"
OCI_PULL_SECRET_ENV = "OCI_PULL_SECRET_MODEL_DOWNLOAD"
# The pod program's ConfigMap: provider version (label) and sha256 of the program (annotation).
LABEL_PROGRAM_VERSION = "airflow-provider-sft/program-version"
ANNOTATION_PROGRAM_SHA256 = "airflow-provider-sft/program-sha256"

# Where the workspace PVC is mounted in the training pod.
DEFAULT_WORKSPACE_MOUNT = "/workspace"
WORKSPACE_VOLUME = "workspace"
SHM_VOLUME = "dshm"  # memory-backed /dev/shm (shm_size)
PROGRAM_VOLUME = "sft-program"  # the pod program's ConfigMap
TMP_VOLUME = "tmp"  # an emptyDir at /tmp
