"""Plumbing shared by every stage (config, run folders, logging). Imports no stage."""
