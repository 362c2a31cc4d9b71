"""The program a training pod (and the local backend's process) runs, and the lines it prints.

``entrypoint`` is the program (``train``, ``resolve``, ``export``), ``steps`` the workspace steps
it and the Airflow worker share, and ``protocol`` the line protocol between the program and a
backend: the provider's ``[sft] `` lines, the ``SFT_RESULT `` line and the ``ERROR: `` line.
"""
