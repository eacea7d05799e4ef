"""Prometheus metrics of the monitor flow: one gauge per window statistic.

The monitor sets these when an event-time window closes (prediction-side
statistics) and again when its labels are complete (outcome statistics), so a
gauge always shows the newest closed window of each model version. The alert
rules in ``monitoring/alerts/`` and the Grafana dashboard read these names; the
flows' shared series (``tributary_flow_events_in_total{flow="monitor"}``,
``tributary_flow_rejects_total{flow="monitor"}``,
``tributary_flow_last_processed_timestamp_seconds{flow="monitor"}``) come from
:mod:`flows.metrics`.

Ratios are 0..1 (``_ratio``), times in seconds, following Prometheus naming.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_VERSION = ["model_version"]
_FEATURE = ["model_version", "feature"]

REQUESTS = Counter(
    "tributary_monitor_requests", "Logged prediction requests read, by model version.", _VERSION
)
WINDOW_REQUESTS = Gauge(
    "tributary_monitor_window_requests", "Requests in the newest closed window.", _VERSION
)
WINDOW_END = Gauge(
    "tributary_monitor_window_end_timestamp_seconds",
    "Event-time end of the newest closed window.",
    _VERSION,
)
HAS_REFERENCE = Gauge(
    "tributary_monitor_has_reference",
    "1 when the version has a reference profile to measure drift against, else 0.",
    _VERSION,
)
# -- business KPIs and realised performance (once labels are complete) -------
CTR = Gauge(
    "tributary_monitor_ctr_ratio", "Clicks per shown item (impression) in the window.", _VERSION
)
LABELLED = Gauge(
    "tributary_monitor_labelled_items",
    "Shown items whose outcome is known, in the newest labelled window.",
    _VERSION,
)
CONVERSION = Gauge(
    "tributary_monitor_conversion_ratio",
    "Shown items purchased within 30 minutes, per shown item, in the window.",
    _VERSION,
)
MEAN_SCORE = Gauge(
    "tributary_monitor_mean_score", "Mean score of the shown items (calibration).", _VERSION
)
ROC_AUC = Gauge(
    "tributary_monitor_roc_auc", "ROC AUC of the shown items' scores against purchases.", _VERSION
)
LOG_LOSS = Gauge("tributary_monitor_log_loss", "Log loss of the shown items' scores.", _VERSION)
# -- estimated performance, before labels (confidence-based) ------------------
ESTIMATED_AUC = Gauge(
    "tributary_monitor_estimated_roc_auc",
    "ROC AUC expected from the scores alone (CBPE), before labels arrive.",
    _VERSION,
)
ESTIMATED_CONVERSION = Gauge(
    "tributary_monitor_estimated_conversion_ratio",
    "Conversion expected from the scores alone (mean score of shown items).",
    _VERSION,
)
CANDIDATE_ESTIMATED_AUC = Gauge(
    "tributary_monitor_candidate_estimated_roc_auc",
    "ROC AUC expected from the scores of every scored candidate (CBPE), like the reference's.",
    _VERSION,
)
EXPECTED_AUC = Gauge(
    "tributary_monitor_expected_roc_auc",
    "ROC AUC the labelled shown items' own scores promised (CBPE), beside the realised one.",
    _VERSION,
)
EXPECTED_CONVERSION = Gauge(
    "tributary_monitor_expected_conversion_ratio",
    "Mean score of the labelled shown items: the conversion the model promised for them.",
    _VERSION,
)
# -- the reference the version was trained against -------------------------
REFERENCE_AUC = Gauge(
    "tributary_monitor_reference_roc_auc", "Validation ROC AUC of the reference.", _VERSION
)
REFERENCE_ESTIMATED_AUC = Gauge(
    "tributary_monitor_reference_estimated_roc_auc",
    "CBPE over every candidate of the reference's sampled requests.",
    _VERSION,
)
REFERENCE_CONVERSION = Gauge(
    "tributary_monitor_reference_conversion_ratio",
    "Validation positive rate of the reference.",
    _VERSION,
)
# -- drift against the reference profile -----------------------------------
FEATURE_PSI = Gauge(
    "tributary_monitor_feature_psi",
    "Population stability index of a numeric feature vs the reference bins.",
    _FEATURE,
)
FEATURE_CHI2_PVALUE = Gauge(
    "tributary_monitor_feature_chi2_pvalue",
    "Chi-square test p-value of a categorical feature vs the reference counts.",
    _FEATURE,
)
FEATURE_JS_DISTANCE = Gauge(
    "tributary_monitor_feature_js_distance",
    "Jensen-Shannon distance (base 2) of a categorical feature vs the reference.",
    _FEATURE,
)
SCORE_PSI = Gauge(
    "tributary_monitor_score_psi", "Population stability index of the scores.", _VERSION
)
CONCEPT_DRIFT = Counter(
    "tributary_monitor_concept_drift",
    "Changes detected by ADWIN in the labelled error stream.",
    _VERSION,
)
FEATURE_AGE = Gauge(
    "tributary_monitor_feature_age_seconds",
    "95th percentile, over the window's requests, of the oldest feature used per view.",
    ["model_version", "view"],
)
PARITY_MISMATCH = Gauge(
    "tributary_monitor_parity_mismatch_ratio",
    "Share of sampled logged feature values that differ from their offline recomputation.",
)
PARITY_CHECKED = Gauge(
    "tributary_monitor_parity_checked_values",
    "Feature values compared by the newest parity check.",
)
# -- the monitor's own bookkeeping (added with the monitor flow) ------------
HELD = Gauge(
    "tributary_monitor_held",
    "What the outcome join holds: requests awaiting labels, pending impressions, orphans.",
    ["kind"],
)
DROPPED = Counter(
    "tributary_monitor_dropped",
    "Logged requests and outcome events the monitor could not use, by reason.",
    ["reason"],
)
LAG = Histogram(
    "tributary_monitor_lag_seconds",
    "From a window's end (event time) to its statistics being exported (wall clock).",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
