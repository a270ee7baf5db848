"""Breast-imaging toolkit: ultrasound BI-RADS and lesion features, screening mammography."""

__version__ = "0.1.0"

import cv2 as _cv2

# Parallelism comes from DataLoader worker processes. An OpenCV thread pool started in the parent
# process does not survive fork(): workers then hang in their first cv2 call. One thread, set
# before any pool exists, avoids both that and oversubscribing the cores.
_cv2.setNumThreads(1)
