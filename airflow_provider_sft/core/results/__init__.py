"""What a finished run yields: its loss metrics, the loss chart, and the exported model.

The chart needs plotly, which the training image lacks: the pod program carries ``metrics`` and
``export`` (its ``export`` step) but not ``chart``.
"""
