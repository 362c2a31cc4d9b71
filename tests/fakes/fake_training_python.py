#!/usr/bin/env python3
"""Stand-in for the training interpreter in local-backend tests of waiting and cancellation.

The local backend starts ``<python> -m airflow_provider_sft.core.pod.entrypoint train CONFIG``.
Pointing it at this script instead gives a "training" whose behaviour the test
chooses through FAKE_TRAINING: ``sleep`` (runs forever and starts a child
process, like data-processing workers), ``memory`` (grows its memory) or
``fail`` (prints an error line and exits 3); ``chatty`` and ``chatty-memory`` print a
line every 20 ms forever (the second also grows its memory), like a training run whose
progress never pauses. It stands in for a long real
training run, which would make these tests take minutes.
"""

import os
import subprocess
import sys
import time

mode = os.environ.get("FAKE_TRAINING", "sleep")
print(f"[sft] fake started pid={os.getpid()} args={sys.argv[1:]}", flush=True)  # a provider line
if mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(f"[sft] fake child pid={child.pid}", flush=True)
    while True:
        time.sleep(0.1)
elif mode == "memory":
    blocks = []
    while True:
        blocks.append(bytearray(32 * 2**20))
        time.sleep(0.05)
elif mode in ("chatty", "chatty-memory"):
    blocks = []
    while True:
        if mode == "chatty-memory":
            blocks.append(bytearray(8 * 2**20))
        print(f"working {len(blocks)}", flush=True)
        time.sleep(0.02)
elif mode == "fail":
    print("ERROR: Invalid training parameter: something precise went wrong", flush=True)
    sys.exit(3)
