"""Recipe modules: what is not data for a recipe (see kit/engine/contract.py for the contract)."""
