"""Running a recipe: its contract with the engine, rendering, attaching, collecting, teardown."""
