"""The project's shared vocabulary: what a trial reports, how a search is tagged in MLflow, how trials end,
and the evaluation columns. The search writes these names and analysis reads them back; neither restates them.

Plain strings only (no ray, mlflow or torch): importable from the training library, the search and analysis.
"""

from __future__ import annotations

# --- the training config's names ---------------------------------------------------------------------------
DATASETS = ("cifar10", "cifar100", "digits")
NO_TEACHER = "none"
"""The teacher of methods that use none."""
RSL_SOURCES = ("nat-nat-nat", "nat-adv-nat", "nat-adv-adv", "adv-adv-adv")
"""Which inputs the soft labels of RSLAD's three terms come from (T(x) or T(x'))."""
SAT_ATTACK_MODES = ("train", "eval")
VAL_ATTACKS = ("pgd", "pgd_trades", "pgd_sat", "fgsm", "cw_inf")
"""The validation attack: "pgd" is the cheap validation PGD; the others are evaluation columns."""

# --- what a trial reports besides its metrics --------------------------------------------------------------
FAILED = "failed_reason"
"""Result key of a trial that failed for a reason a retry would repeat (e.g. a non-finite loss)."""
RESTORE_WARNING = "restore_warning"
"""Result key set when a trial continued from an older checkpoint than its newest (the newest was torn)."""

# Per-epoch metrics a trial reports that belong in MLflow (Ray adds timestamps, pids, config/*...).
METRIC_KEYS = ("train_loss", "lr", "val_clean_acc", "val_pgd_acc", "best_val_pgd_acc", "best_val_clean_acc",
               "best_epoch", "schedule_pct", "epoch_time_s", "images_per_s", "rsl_cache_computed",
               "rsl_cache_reused", "gpu_mem_peak_gb", "gpu_mem_reserved_gb", "gpu_util_pct")
# The per-epoch curves analysis draws (step = epoch, 1-based); their last value is the "final" column.
EPOCH_METRICS = ("train_loss", "lr", "val_clean_acc", "val_pgd_acc", "best_val_pgd_acc", "best_epoch",
                 "schedule_pct", "epoch_time_s", "images_per_s")

# --- MLflow tags of a search (parent run, one child run per trial) ------------------------------------------
ROLE = "rslad.role"
"""'search' (the parent run), 'trial' (a child run) or 'teacher' (a registered teacher's run)."""
SEARCH = "rslad.search"
SEARCH_ID = "rslad.search_id"
STORAGE = "rslad.storage"
TRIAL_ID = "ray.trial_id"
STATUS = "rslad.status"
"""How a run stands: running, finished (its whole schedule), stopped_early (cut by the scheduler), failed,
interrupted (still running when the driver was stopped; a resume continues it) or orphaned."""
ORPHANED = "orphaned"
"""The status of a run whose trial Tune never saved (the driver killed right after it started): closed KILLED on
resume, beside the run of the trial that replaced it; no trial of the search."""
EPOCHS_RUN = "rslad.epochs_run"
CHECKPOINT_DIR = "rslad.checkpoint_dir"
ERROR = "rslad.error"
METRIC_TAG = "rslad.metric"
BEST_TRIAL = "rslad.best_trial"
WINNER_PREFIX = "winner."
"""Tags winner.<param> on the parent run: the winning trial's searched values."""
REPLICATE_OF = "rslad.replicate_of"
"""On a replicate's run (python -m search.replicate): the trial id of the search's trial whose configuration it
trains again with another seed."""
REPLICATE_SEED = "rslad.replicate_seed"
"""On a replicate's run: its train.seed (train.order_seed is shifted alike; the validation split is the search's)."""

# --- evaluation ----------------------------------------------------------------------------------------
EVAL_COLUMNS = ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw_inf", "autoattack")
"""The supplement's evaluation columns, in its order."""
COLUMN_TITLES = {"clean": "Clean", "fgsm": "FGSM", "pgd_sat": "PGD_SAT", "pgd_trades": "PGD_TRADES",
                 "cw_inf": "CW_inf", "autoattack": "AA", "aa_custom": "AA subset (not AA)"}
