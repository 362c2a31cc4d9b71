"""Front-end independent core of airflow-provider-sft.

Nothing under this package imports Airflow or KFP: the Airflow operators and the
KFP shim are thin front ends over the same functions (a unit test enforces it).
"""
