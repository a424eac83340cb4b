"""Shared types and plumbing for every stage of the pipeline."""
