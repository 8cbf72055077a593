"""Domain code of the fine-tuning autopilot (no azure.functions imports here)."""
