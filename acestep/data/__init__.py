"""Data stages: the filename dataset (stage 2), preprocessing into training tensors (stage 3), the report."""
