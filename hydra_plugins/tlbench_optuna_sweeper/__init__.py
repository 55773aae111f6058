"""Hydra sweeper plugin `hydra/sweeper=tlbench_optuna`: tlbench's Optuna search (tlbench.search) run from
`tlbench -m`. Hydra finds it by scanning the `hydra_plugins` namespace package."""
