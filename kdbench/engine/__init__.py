"""The one training loop and evaluation shared by every method."""
