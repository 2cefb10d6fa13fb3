"""Shared test setup: quiet TensorFlow, CPU only. The package is installed (editable) by
`pip install -r requirements.txt`; the tools' folder is on the path (pytest.ini)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
