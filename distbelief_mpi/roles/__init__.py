"""Thin loops, one per role; they wire comm to optim, model and data."""
