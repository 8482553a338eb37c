"""The admin of the indicators: the dashboards (trends, retention, searches, key behaviours,
churn) and funnels in `dashboards`, the goals in `goals`."""

from indicators.admin import dashboards, goals  # noqa: F401  (each registers its pages)
