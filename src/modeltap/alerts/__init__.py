"""Alerts: levels held long enough become alerts, alerts become notifications (issue: alerts)."""
