"""Templates that `sensegate driver new` fills in (package data, shipped with sensegate)."""
