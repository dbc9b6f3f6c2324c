"""Alerts: levels held long enough become alerts (`state`), alerts become notifications to
webhooks, Alertmanager and Slack-style receivers, sent from a thread of their own."""
