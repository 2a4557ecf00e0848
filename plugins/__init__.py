"""kdbench's first-party plugins.

Each module here is listed in the ``kdbench`` entry-point group of
pyproject.toml and is loaded exactly as a third-party plugin would be.
"""
