"""Adapters that convert public datasets (BUS-BRA, BrEaST, mini-MIAS) into the layouts the trainers read."""
