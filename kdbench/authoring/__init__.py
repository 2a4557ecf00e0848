"""Tools for plugin authors: the scaffold."""
