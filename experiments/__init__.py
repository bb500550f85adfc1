"""Entry points (thin): `python -m experiments.run --config=NAME[:ARG]`."""
