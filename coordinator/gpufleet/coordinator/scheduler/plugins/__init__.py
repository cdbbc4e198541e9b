"""Scheduler plugins, one small module each (filter, score, pre-filter and permit stages)."""
