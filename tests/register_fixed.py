"""Imported by gin files of subprocess tests: registers the fixed test task."""
from helpers import register_fixed_task

register_fixed_task()
