"""From recorded runs to leaderboards and published reports."""
