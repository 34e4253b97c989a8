"""User stacks: symbolizing addresses, frames hidden by code without frame pointers."""
