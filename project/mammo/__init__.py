"""Screening mammography: DICOM decoding (DALI / pydicom), windowing, breast ROI crop, data preparation."""
