"""The driver SDK: `sensegate driver new` (scaffold) and `sensegate driver check` (checker)."""
