"""Instruction curation: seed pools, synthesis from passages, teacher labeling, quality and diversity filters."""
