"""The record of what ran: MLflow schema, writing and reading runs."""
