"""The memory planner's CLI (`python -m acestep.plan`); each family's terms live in acestep/families/<name>/plan.py."""
