"""Hyperparameter search: Optuna studies over Hydra overrides, each trial a tlbench run recorded in
MLflow under one parent run (`tlbench search`, or `tlbench -m hydra/sweeper=tlbench_optuna`)."""
