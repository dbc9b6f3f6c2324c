"""The names modeltap's metrics have in Prometheus, as the OpenTelemetry Collector's Prometheus
exporter serves them (dots become underscores, `_seconds` for unit `s`, `_total` on monotonic
sums, `_bucket` / `_count` on histograms) and as modeltap's own `/metrics` writes them. The
backend tests read a live scrape and check every name here against it."""

from __future__ import annotations

FEATURE_BUCKET = "modeltap_feature_values_bucket"
FEATURE_CATEGORIES = "modeltap_feature_categories_total"
DURATION_BUCKET = "http_server_request_duration_seconds_bucket"
DURATION_COUNT = "http_server_request_duration_seconds_count"
DROPPED = "modeltap_capture_dropped_total"
VIOLATIONS = "modeltap_data_quality_violations_total"

MODEL = "modeltap_model_name"
VERSION = "modeltap_model_version"
REFERENCE = "modeltap_reference_id"
ROLE = "modeltap_feature_role"
FEATURE = "modeltap_feature_name"
CATEGORY = "modeltap_feature_category"
DROP_REASON = "modeltap_drop_reason"
VIOLATION_REASON = "modeltap_violation_reason"
STATUS = "http_response_status_code"

# Labels that name one feature of one reference (the reference's constants carry these) and,
# with the model name and version, one feature's series summed across replicas.
FEATURE_KEY = (REFERENCE, ROLE, FEATURE)
MODEL_KEY = (MODEL, VERSION)
SERIES_KEY = (*MODEL_KEY, *FEATURE_KEY)
