"""`ovseg train`: the OV2VSS training recipe (paper IV-B) on a prepared dataset.

- ``config``: the run's settings (one YAML, sections model/data/optim/loss/run);
- ``data``: the seen-class clip loader in a replayable order;
- ``distributed``: torchrun / DistributedDataParallel plumbing;
- ``state``: resumable checkpoints (optimizer, scheduler, scaler, RNG, data position);
- ``loop``: the training loop itself.
"""
