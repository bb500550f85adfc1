"""spark_jax: SPARK and NTK-DFL decentralized federated learning in JAX.

Data flows data -> partition -> topology -> models -> ntk/sketch -> algorithms
-> metrics/comm -> io; no module imports "upward".
"""

__version__ = "0.1.0"
