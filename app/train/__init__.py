"""The training worker and what it needs: recipes, model setup, callbacks, launch, memory estimate."""
