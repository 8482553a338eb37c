"""The admin of the indicators: the dashboards (trends, retention, searches, key behaviours,
churn) and funnels in `dashboards`, the goals in `goals`, the anomaly alerts in `alerts`."""

from indicators.admin import alerts, dashboards, goals  # noqa: F401  (each registers its pages)
