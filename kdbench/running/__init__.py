"""Running a suite: runner, cells, method stages, teachers, progress."""
