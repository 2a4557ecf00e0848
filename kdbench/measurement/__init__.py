"""Measuring models on hardware targets, and the environment they ran in."""
