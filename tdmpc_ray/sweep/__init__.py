"""Ray Tune sweeps over the distillation recipe: YAML specs (`tune/*.yaml`) and their runner."""
