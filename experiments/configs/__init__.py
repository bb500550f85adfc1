"""Named experiment configs: one `get_config(arg)` per file (ml_collections).

`--config=NAME[:ARG]` resolves NAME to `experiments/configs/NAME.py`.
"""
