"""What the demo prints while the DAG runs."""

from __future__ import annotations

from airflow_provider_sft.demo import echo_text


def test_the_demo_echoes_the_message_of_a_training_line_without_logger_and_location():
    line = "2026-12-02 [info     ] [sft] done in 43.8s       [airflow_provider_sft.training] loc=training_log.py:21"
    assert echo_text(line) == "done in 43.8s"
    assert echo_text("x [sft] step 1/180 loss 6.3 [airflow.task] loc=a.py:1") == "step 1/180 loss 6.3"
