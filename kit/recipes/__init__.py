"""Recipe modules: what is not data for a recipe (see kit/contract.py for the contract)."""
