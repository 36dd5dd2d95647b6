"""Segmenting videos: the segmenter interface (``protocol``) and the training-free segmenter
(``training_free``, ``temporal_fusion``); the stream that runs any segmenter over frames with
keyframes, optical-flow propagation and shot resets (``stream``, ``masks``, ``propagation``,
``shots``); and the run that writes an output folder (``run``)."""
