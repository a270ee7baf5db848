"""Breast-imaging toolkit: ultrasound BI-RADS and lesion features, screening mammography."""

__version__ = "0.1.0"
