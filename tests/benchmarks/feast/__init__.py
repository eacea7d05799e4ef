"""The Feast side of the feature-serving comparison; its scripts run in Feast's own virtualenv."""
