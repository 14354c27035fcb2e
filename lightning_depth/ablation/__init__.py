"""Ablations: every arm of a design choice trained over several seeds, then compared with statistics.

The lifecycle is setup -> launch -> collect -> analyze, and every step leaves files a person can read:

- :mod:`~lightning_depth.ablation.spec` turns the experiment file's ``ablation:`` section into arms and trials
  (pure, deterministic) and gives each trial a stable, content-addressed id;
- :mod:`~lightning_depth.ablation.run` plans every trial's configuration, refuses bad input before anything is
  written (:mod:`~lightning_depth.ablation.checks`), writes it to disk and launches the trials
  (:mod:`~lightning_depth.ablation.launch_local`, or a SLURM array job through :mod:`~lightning_depth.ablation.slurm`),
  leaving alone the trials a live process or SLURM job holds (:mod:`~lightning_depth.ablation.liveness`);
- :mod:`~lightning_depth.ablation.ledger` is the on-disk layout: ``ablation.json``, and per trial ``trial.json``,
  ``state.json`` (atomic, lock-free), ``result.json`` and Lightning's ``metrics.csv``;
- :mod:`~lightning_depth.ablation.stats` computes mean ± std over seeds and seed-paired deltas with t intervals;
- :mod:`~lightning_depth.ablation.report` collects the results, :mod:`~lightning_depth.ablation.render` writes the
  table, :mod:`~lightning_depth.ablation.plots` the figures; :mod:`~lightning_depth.ablation.status` reads states.
"""
