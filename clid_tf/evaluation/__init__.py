"""Label-free checkpoint selection and ensembles, and label issues."""
