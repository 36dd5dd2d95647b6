"""Scoring a segmenter on a prepared dataset: the open-vocabulary protocol (``protocol``),
the metrics (``metrics``) and the report folder (``report``)."""
